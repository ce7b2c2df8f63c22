"""eval.precision: the scoring forward's autocast (lm.resolve_precision), read by the config check in evaluate.py
and by the model in lm.py; neither imports the other for it."""

PRECISIONS = ("auto", "fp32", "bf16")
