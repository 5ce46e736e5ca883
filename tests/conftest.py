"""Fixtures shared by test files: trained adapters (with their tasks) on one tiny model."""

import pytest

from tiny_run import run_config


@pytest.fixture(scope="session")
def trained_adapters(tmp_path_factory):
    """Three trained adapters on one tiny model: different methods, prompt lengths, templates and label words."""
    from softprompt.training import TrainConfig, train

    tmp_path = tmp_path_factory.mktemp("adapters")
    variants = {
        "complaints": ("prompt_tuning", {"num_virtual_tokens": 4}, {}),
        "yesno": (
            "prefix_tuning",
            {"num_virtual_tokens": 2},
            {"template": "Tweet: {Tweet text}\nComplaint?", "verbalizer": {"complaint": " yes", "no complaint": " no"}},
        ),
        "ptuning": ("p_tuning", {"num_virtual_tokens": 6, "encoder_hidden_size": 16}, {"template": "{Tweet text} =>"}),
    }
    folders = {}
    for name, (method, options, task) in variants.items():
        config = run_config(tmp_path, method, epochs=1, method_options=options, output_dir=str(tmp_path / name))
        config["task"].update(task)
        train(TrainConfig.from_dict(config))
        folders[name] = str(tmp_path / name / "adapter")
    return folders


# One Predictor per test module over those adapters (a module's server may load and unload adapters on it), and a
# separate one for the answers each adapter gives outside the server.
@pytest.fixture(scope="module")
def predictor(trained_adapters):
    from softprompt import Predictor

    return Predictor.from_pretrained(trained_adapters)


@pytest.fixture(scope="module")
def offline(trained_adapters):
    """A separate Predictor: the answers each adapter gives outside the server."""
    from softprompt import Predictor

    return Predictor.from_pretrained(trained_adapters)
