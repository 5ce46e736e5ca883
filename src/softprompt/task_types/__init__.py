"""The task types, one module each: its PeftModel subclass, its AutoPeftModel class and, for task types that
`softprompt train` handles, its TaskBehaviour; each registers itself (registry.register_task_type).

    causal_lm.py  CAUSAL_LM           label scoring, generation
    seq_cls.py    SEQ_CLS             a trainable classification head per adapter
    token_cls.py  TOKEN_CLS           per-token classification
    seq2seq.py    SEQ_2_SEQ_LM        encoder-decoder models (T5, BART)
    features.py   FEATURE_EXTRACTION  hidden states
"""

from .base import TaskBehaviour
from .causal_lm import AutoPeftModelForCausalLM, LabelScoring, PeftModelForCausalLM
from .features import AutoPeftModelForFeatureExtraction, PeftModelForFeatureExtraction
from .seq2seq import AutoPeftModelForSeq2SeqLM, PeftModelForSeq2SeqLM
from .seq_cls import AutoPeftModelForSequenceClassification, HeadClassification, PeftModelForSequenceClassification
from .token_cls import AutoPeftModelForTokenClassification, PeftModelForTokenClassification

__all__ = [
    "AutoPeftModelForCausalLM",
    "AutoPeftModelForFeatureExtraction",
    "AutoPeftModelForSeq2SeqLM",
    "AutoPeftModelForSequenceClassification",
    "AutoPeftModelForTokenClassification",
    "HeadClassification",
    "LabelScoring",
    "PeftModelForCausalLM",
    "PeftModelForFeatureExtraction",
    "PeftModelForSeq2SeqLM",
    "PeftModelForSequenceClassification",
    "PeftModelForTokenClassification",
    "TaskBehaviour",
]
