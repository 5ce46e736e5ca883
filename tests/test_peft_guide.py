"""PEFT's prompt-tuning guide for causal LMs runs unchanged with `from softprompt import ...`.

The code below follows the guide step by step (tokenize, left-pad to a fixed length, train with AdamW
and a linear schedule, evaluate, save, generate, reload with PeftConfig/PeftModel); only the import
line, the model (a tiny local one) and the data (toy tweets) differ.
"""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator, get_linear_schedule_with_warmup

from softprompt import (
    PeftConfig,
    PeftModel,
    PeftType,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_config,
    get_peft_model,
)
from tiny_run import make_tiny_model_folder, toy_rows


def test_the_guide_runs_unchanged(tmp_path):
    model_name_or_path = str(make_tiny_model_folder(tmp_path / "model"))
    tokenizer_name_or_path = model_name_or_path
    peft_config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        prompt_tuning_init=PromptTuningInit.TEXT,
        num_virtual_tokens=8,
        prompt_tuning_init_text="Classify if the tweet is a complaint or not:",
        tokenizer_name_or_path=model_name_or_path,
    )
    text_column, label_column, max_length, lr, num_epochs, batch_size = "Tweet text", "text_label", 32, 3e-2, 2, 4
    classes = ["complaint", "no complaint"]
    rows = [dict(r, text_label=classes[r["Label"] - 1]) for r in toy_rows(8, seed=0)]

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.eos_token_id

    def preprocess_function(examples):
        batch_size = len(examples[text_column])
        inputs = [f"{text_column} : {x} Label : " for x in examples[text_column]]
        targets = [str(x) for x in examples[label_column]]
        model_inputs = tokenizer(inputs)
        labels = tokenizer(targets)
        for i in range(batch_size):
            sample_input_ids = model_inputs["input_ids"][i]
            label_input_ids = labels["input_ids"][i] + [tokenizer.pad_token_id]
            model_inputs["input_ids"][i] = sample_input_ids + label_input_ids
            labels["input_ids"][i] = [-100] * len(sample_input_ids) + label_input_ids
            model_inputs["attention_mask"][i] = [1] * len(model_inputs["input_ids"][i])
        for i in range(batch_size):
            sample_input_ids = model_inputs["input_ids"][i]
            label_input_ids = labels["input_ids"][i]
            model_inputs["input_ids"][i] = [tokenizer.pad_token_id] * (
                max_length - len(sample_input_ids)
            ) + sample_input_ids
            model_inputs["attention_mask"][i] = [0] * (max_length - len(sample_input_ids)) + model_inputs[
                "attention_mask"
            ][i]
            labels["input_ids"][i] = [-100] * (max_length - len(sample_input_ids)) + label_input_ids
            model_inputs["input_ids"][i] = torch.tensor(model_inputs["input_ids"][i][:max_length])
            model_inputs["attention_mask"][i] = torch.tensor(model_inputs["attention_mask"][i][:max_length])
            labels["input_ids"][i] = torch.tensor(labels["input_ids"][i][:max_length])
        model_inputs["labels"] = labels["input_ids"]
        return model_inputs

    columns = {key: [r[key] for r in rows] for key in rows[0]}
    processed = preprocess_function(columns)
    dataset = [{k: processed[k][i] for k in ("input_ids", "attention_mask", "labels")} for i in range(len(rows))]
    train_dataloader = torch.utils.data.DataLoader(
        dataset, shuffle=True, collate_fn=default_data_collator, batch_size=batch_size
    )
    eval_dataloader = torch.utils.data.DataLoader(dataset, collate_fn=default_data_collator, batch_size=batch_size)

    model = AutoModelForCausalLM.from_pretrained(model_name_or_path)
    model = get_peft_model(model, peft_config)
    model.print_trainable_parameters()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    lr_scheduler = get_linear_schedule_with_warmup(
        optimizer=optimizer, num_warmup_steps=0, num_training_steps=(len(train_dataloader) * num_epochs)
    )
    losses = []
    for _epoch in range(num_epochs):
        model.train()
        total_loss = 0
        for _step, batch in enumerate(train_dataloader):
            outputs = model(**batch)
            loss = outputs.loss
            total_loss += loss.detach().float()
            loss.backward()
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        model.eval()
        eval_preds = []
        for _step, batch in enumerate(eval_dataloader):
            with torch.no_grad():
                outputs = model(**batch)
            eval_preds.extend(
                tokenizer.batch_decode(
                    torch.argmax(outputs.logits, -1).detach().cpu().numpy(), skip_special_tokens=True
                )
            )
        losses.append(total_loss / len(train_dataloader))
    assert len(eval_preds) == len(rows)

    peft_model_id = str(tmp_path / "adapter")
    model.save_pretrained(peft_model_id)
    inputs = tokenizer(
        f"{text_column} : {'@nationalgridus I have no water and the bill is current and paid.'} Label : ",
        return_tensors="pt",
    )
    with torch.no_grad():
        outputs = model.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=10, eos_token_id=3
        )
    decoded = tokenizer.batch_decode(outputs.detach().cpu().numpy(), skip_special_tokens=True)
    assert decoded[0].startswith("Tweet text : @nationalgridus")

    config = PeftConfig.from_pretrained(peft_model_id)
    assert config.peft_type == PeftType.PROMPT_TUNING
    model2 = AutoModelForCausalLM.from_pretrained(config.base_model_name_or_path)
    model2 = PeftModel.from_pretrained(model2, peft_model_id)
    with torch.no_grad():
        again = model2.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=10, eos_token_id=3
        )
    assert torch.equal(again, outputs)
    assert get_peft_config(config.to_dict()) == config
