"""Loaders and prompt functions for the moda_* task YAMLs (referenced as ``!function utils.<name>``).

Prompts follow lm-eval's own task definitions (piqa, hellaswag, winogrande, openbookqa, super_glue boolq/copa,
sciq, arc, mmlu), so scores are comparable with the harness's numbers on the same data. Every prompt is a Python
function, none a Jinja template: lm-eval 0.4.13 compiles a template string anew on every use (three per example,
again when scoring), which took 87 of the 124 s that the ten tasks cost with a model that does nothing (CPU,
2026-12-07). The functions return what those templates rendered, example for example
(tests/cpu/test_eval_prompts.py holds the templates and checks it on the real data).
"""

from __future__ import annotations

import json
import logging
import re

import datasets

from moda_lab.eval.tasks import DATA_ENV, SPLIT_SIZES, TASK_FIELDS, TaskDataError, task_file

# lm-eval imports this file as a module of its own name: the logger is named after the package.
log = logging.getLogger("moda_lab.eval.tasks")


def load_local(task: str, data_dir: str | None = None, **metadata) -> datasets.DatasetDict:
    """custom_dataset hook: <data_dir>/<task>.jsonl as the 'test' split; every line checked for its fields and its
    gold answer. A file holding fewer examples than the task's full split (SPLIT_SIZES) is named in a warning."""
    path = task_file(task, data_dir)
    if not path.is_file():
        raise TaskDataError(
            f"eval data for task {task!r} not found: {path} does not exist. Put {task}.jsonl there, or point "
            f"eval.data_dir (Hydra), --data_dir (CLI) or ${DATA_ENV} at the directory holding it"
        )
    need = TASK_FIELDS[task]
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskDataError(f"{path}:{lineno}: not valid JSON ({err})") from None
            missing = [k for k in need if not isinstance(row, dict) or k not in row]
            if missing:
                raise TaskDataError(f"{path}:{lineno}: missing field(s) {missing}; task {task!r} needs {list(need)}")
            bad_gold = gold_problem(task, row)
            if bad_gold:
                raise TaskDataError(f"{path}:{lineno}: {bad_gold}")
            rows.append(row)
    if not rows:
        raise TaskDataError(f"{path} holds no examples; task {task!r} needs one JSON object per line")
    if len(rows) < SPLIT_SIZES[task]:
        log.warning(
            "%s holds %d examples, fewer than the %d of the full %s split: its scores are a partial evaluation, "
            "not the full task's", path, len(rows), SPLIT_SIZES[task], task
        )
    if task == "hellaswag":
        rows = [{**row, **hellaswag_fields(row)} for row in rows]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def _is_index(value, n: int) -> bool:
    return isinstance(value, int) and 0 <= value < n  # bool: int(True) is 1, as lm-eval reads it


def gold_problem(task: str, row: dict) -> str | None:
    """What is wrong with an example's gold answer (the field, its value and what is allowed), or None. lm-eval
    would stop on it with an IndexError or KeyError deep in its task setup, or score another choice as gold."""
    if task in ("piqa", "copa", "boolq"):
        choices = {"piqa": "sol1, sol2", "copa": "choice1, choice2", "boolq": "no, yes"}[task]
        field, ok, allowed = "label", _is_index(row["label"], 2), f"0 or 1 (the gold one of {choices})"
    elif task == "winogrande":
        field, ok, allowed = "answer", str(row["answer"]) in ("1", "2"), "'1' or '2' (option1 or option2)"
    elif task == "hellaswag":
        n = len(row["endings"]) if isinstance(row["endings"], list) else 0
        if not n:
            return f"endings={row['endings']!r} is not allowed; task 'hellaswag' needs a list of endings"
        label = row["label"]
        field, ok = "label", str(label).isdigit() and int(label) < n
        allowed = f"0..{n - 1} (an index into endings, also as a string)"
    elif task == "mmlu":
        n = len(row["choices"]) if isinstance(row["choices"], list) else 0
        if not 1 <= n <= 4:
            return f"choices={row['choices']!r} is not allowed; task 'mmlu' needs a list of 1 to 4 answers (A-D)"
        field, ok, allowed = "answer", _is_index(row["answer"], n), f"0..{n - 1} (an index into choices)"
    elif task in ("openbookqa", "arc_easy", "arc_challenge"):
        choices = row["choices"]
        labels = choices.get("label") if isinstance(choices, dict) else None
        if not isinstance(labels, list) or not isinstance(choices.get("text"), list):
            return f"choices={choices!r} is not allowed; task {task!r} needs {{'text': [...], 'label': [...]}}"
        key = row["answerKey"]
        field, ok = "answerKey", isinstance(key, str) and key.lstrip() in labels
        allowed = f"one of the choice labels {labels}"
    else:  # sciq: the gold answer is correct_answer, always the last choice
        return None
    return None if ok else f"{field}={row[field]!r} is out of range; task {task!r} allows {allowed}"


# --- arc (easy and challenge), openbookqa: lettered choices --------------------------------------------------


def arc_doc_to_text(doc: dict) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def lettered_doc_to_target(doc: dict) -> int:
    """The answer key's position among the choice labels (OpenBookQA's keys may carry a leading space)."""
    return doc["choices"]["label"].index(doc["answerKey"].lstrip())


def lettered_doc_to_choice(doc: dict) -> list[str]:
    return list(doc["choices"]["text"])


def openbookqa_doc_to_text(doc: dict) -> str:
    return doc["question_stem"]


# --- boolq, piqa, sciq ----------------------------------------------------------------------------------------


def boolq_doc_to_text(doc: dict) -> str:
    return f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:"


def boolq_doc_to_target(doc: dict) -> int:
    return int(doc["label"])


def piqa_doc_to_text(doc: dict) -> str:
    return f"Question: {doc['goal']}\nAnswer:"


def piqa_doc_to_choice(doc: dict) -> list[str]:
    return [doc["sol1"], doc["sol2"]]


def sciq_doc_to_text(doc: dict) -> str:
    return f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:"


def sciq_doc_to_choice(doc: dict) -> list[str]:
    return [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]


# --- hellaswag -------------------------------------------------------------------------------------------


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")  # WikiHow artifacts
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_fields(doc: dict) -> dict:
    """What the prompt reads from a HellaSwag example: the cleaned context, endings and gold index. Added by
    load_local when it reads the file (as a process_docs hook it ran again on every one of lm-eval's ~5 reads
    of the split: 9.6 of 29 s, CPU, 2026-12-07)."""
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": _hellaswag_clean(doc["activity_label"] + ": " + ctx),
        "options": [_hellaswag_clean(e) for e in doc["endings"]],
        "gold": int(doc["label"]),
    }


def hellaswag_doc_to_text(doc: dict) -> str:
    return doc["query"]


def hellaswag_doc_to_target(doc: dict) -> int:
    return doc["gold"]


def hellaswag_doc_to_choice(doc: dict) -> list[str]:
    return list(doc["options"])


# --- winogrande: score the sentence suffix after each filled-in option (partial evaluation) --------------


def winogrande_doc_to_text(doc: dict) -> int:
    return {"1": 0, "2": 1}[str(doc["answer"])]


def winogrande_doc_to_target(doc: dict) -> str:
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_doc_to_choice(doc: dict) -> list[str]:
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


# --- copa ---------------------------------------------------------------------------------------------------


def _lower_first(choice: str) -> str:
    return choice[0].lower() + choice[1:]


def copa_doc_to_text(doc: dict) -> str:
    connector = {"cause": "because", "effect": "therefore"}[doc["question"]]
    return doc["premise"].strip()[:-1] + f" {connector}"  # drop the premise's period


def copa_doc_to_choice(doc: dict) -> list[str]:
    # No leading space: lm-eval's target_delimiter adds one. (lm-eval 0.4.13's own copa adds a second one here,
    # so it scores "premise because  the choice" with two spaces.)
    return [_lower_first(doc["choice1"]), _lower_first(doc["choice2"])]


# --- mmlu: one file, all subjects; the subject goes into the header as in lm-eval's description ----------


def mmlu_doc_to_text(doc: dict) -> str:
    subject = doc["subject"].replace("_", " ")
    letters = "ABCD"
    lines = [
        f"The following are multiple choice questions (with answers) about {subject}.",
        "",
        doc["question"].strip(),
    ]
    lines += [f"{letters[i]}. {c}" for i, c in enumerate(doc["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def mmlu_doc_to_choice(doc: dict) -> list[str]:
    return list("ABCD"[: len(doc["choices"])])
