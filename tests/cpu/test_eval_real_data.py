"""The task YAMLs on the real evaluation splits in ../shared/data/eval (MANIFEST.md there).

Every example of every file present: the choices lm-eval scores and the gold index agree with the raw fields
(ARC's numeric answer keys "1".."4" and its 3- and 5-choice items, COPA's cause/effect connective, MMLU's 57
subjects, HellaSwag's HF layout: string labels "0".."3" and WikiHow's bracket markers, cleaned as lm-eval's own
hellaswag task does). Then the tiny checkpoint is evaluated on limit=5 real examples of each file, chosen to
include those formats, and every scored request is checked against its example.

The data dir is the eval's own (moda_lab.eval.tasks.data_dir: $MODA_EVAL_DATA, else ../shared/data/eval); every
test here skips where it holds no task file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

from moda_lab.eval import eval_config_from_dict  # noqa: E402
from moda_lab.eval.tasks import TASK_DIR, TASK_FIELDS, data_dir, lm_eval_name  # noqa: E402

REAL = data_dir()
PRESENT = [t for t in TASK_FIELDS if (REAL / f"{t}.jsonl").is_file()]
pytestmark = pytest.mark.skipif(
    not PRESENT, reason=f"no real eval data: {REAL} (the read-only ../shared/data/eval) is absent or holds no task file"
)
MMLU_SUBJECTS = 57
HELLASWAG_VALIDATION = 10042  # rows of HellaSwag's validation split (MANIFEST.md)


def _rows(task: str, root: Path = REAL) -> list[dict]:
    with (root / f"{task}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _lower_first(s: str) -> str:
    return s[0].lower() + s[1:]


def expected(task: str, row: dict) -> tuple[list[str], int]:
    """(choices, gold index) of one raw example, read from its fields the way each dataset defines them.

    The choices are what follows lm-eval's target_delimiter (one space) in the scored continuation.
    """
    if task == "piqa":
        return [row["sol1"], row["sol2"]], row["label"]
    if task == "winogrande":
        prefix = row["sentence"][: row["sentence"].index("_")]
        return [prefix + row["option1"], prefix + row["option2"]], int(row["answer"]) - 1
    if task in ("openbookqa", "arc_easy", "arc_challenge"):
        return row["choices"]["text"], row["choices"]["label"].index(row["answerKey"].strip())
    if task == "boolq":
        return ["no", "yes"], row["label"]
    if task == "sciq":
        return [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]], 3
    if task == "copa":
        return [_lower_first(row["choice1"]), _lower_first(row["choice2"])], row["label"]
    if task == "mmlu":
        return ["A", "B", "C", "D"], row["answer"]
    if task == "hellaswag":  # the endings as lm-eval's own hellaswag task cleans them; label is a string
        return [hellaswag_preprocess(e) for e in row["endings"]], int(row["label"])
    raise KeyError(task)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's own HellaSwag cleaning (WikiHow's ``[title]``/``[step]`` markers), the reference our YAML follows."""
    from lm_eval.tasks.hellaswag.utils import preprocess

    return preprocess(text)


def hellaswag_query(row: dict) -> str:
    return hellaswag_preprocess(row["activity_label"] + ": " + row["ctx_a"] + " " + row["ctx_b"].capitalize())


def _tasks(data: Path) -> dict:
    from lm_eval.tasks import TaskManager, get_task_dict

    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata={"data_dir": str(data)})
    return get_task_dict([lm_eval_name(t) for t in PRESENT], tm)


def _gold(task_obj, doc: dict) -> tuple[list[str], int]:
    """What lm-eval will score: the choices and gold index (winogrande: the contexts, gold from doc_to_text)."""
    choices = task_obj.doc_to_choice(doc)
    gold = task_obj.doc_to_text(doc) if task_obj.multiple_input else task_obj.doc_to_target(doc)
    return choices, int(gold)


@pytest.mark.slow  # ~40 s on 2 cores: every row of all ten files, MMLU's 14,042 and HellaSwag's 10,042 among them
def test_every_real_example_scores_its_gold_choice():
    tasks = _tasks(REAL)
    for task in PRESENT:
        obj = tasks[lm_eval_name(task)]
        docs = list(obj.test_docs())
        rows = _rows(task)
        assert len(docs) == len(rows) > 0
        for i, (doc, row) in enumerate(zip(docs, rows)):
            assert _gold(obj, doc) == expected(task, row), f"{task}.jsonl line {i + 1}"
        if task == "copa":
            for doc, row in zip(docs, rows):
                connective = {"cause": " because", "effect": " therefore"}[row["question"]]
                assert obj.doc_to_text(doc) == row["premise"][:-1] + connective
        if task == "mmlu":
            subjects = {row["subject"] for row in rows}
            assert len(subjects) == MMLU_SUBJECTS, sorted(subjects)
            for doc, row in zip(docs, rows):
                text = obj.doc_to_text(doc)
                assert f"about {row['subject'].replace('_', ' ')}." in text.splitlines()[0]
                lettered = "\n".join(f"{'ABCD'[k]}. {c}" for k, c in enumerate(row["choices"]))
                assert text.endswith("\n" + lettered + "\nAnswer:")  # choices may hold newlines themselves
        if task.startswith("arc_"):  # the formats the YAML must handle are really in the file
            labels = {tuple(r["choices"]["label"]) for r in rows}
            assert any(lab[0] == "1" for lab in labels) and {len(lab) for lab in labels} >= {4, 5}
        if task == "hellaswag":
            assert len(rows) == HELLASWAG_VALIDATION and {r["label"] for r in rows} == {"0", "1", "2", "3"}
            for doc, row in zip(docs, rows):
                assert obj.doc_to_text(doc) == hellaswag_query(row)


def _five(task: str) -> list[dict]:
    """Five real examples of a file, covering its unusual formats (numeric keys, 3/5 choices, cause and effect)."""
    rows = _rows(task)
    if task.startswith("arc_"):
        picks = [
            next(r for r in rows if r["choices"]["label"][0] == "1"),
            next(r for r in rows if len(r["choices"]["label"]) == 3),
            next(r for r in rows if len(r["choices"]["label"]) == 5),
        ]
    elif task == "copa":
        picks = [next(r for r in rows if r["question"] == q) for q in ("cause", "effect")]
    elif task == "mmlu":
        by_subject: dict[str, dict] = {}
        for r in rows:
            by_subject.setdefault(r["subject"], r)
        picks = list(by_subject.values())[:5]
    elif task == "hellaswag":
        picks = [_hellaswag_activitynet(rows), _hellaswag_wikihow(rows)]
    else:
        picks = []
    return (picks + [r for r in rows if r not in picks])[:5]


def _hellaswag_activitynet(rows: list[dict]) -> dict:
    return next(r for r in rows if r["source_id"].startswith("activitynet") and r["ctx_b"])


def _hellaswag_wikihow(rows: list[dict]) -> dict:
    """A WikiHow row: its context and endings carry the bracket markers, its ctx_b is empty."""
    return next(r for r in rows if r["source_id"].startswith("wikihow") and "[title]" in r["ctx_a"] and not r["ctx_b"])


@pytest.mark.skipif("hellaswag" not in PRESENT, reason=f"no {REAL / 'hellaswag.jsonl'}")
def test_hellaswag_hf_layout_on_real_rows(tmp_path):
    """A few real HellaSwag rows, as the HF layout stores them (extra fields ind, ctx, source_id, split, split_type;
    label a string): the task loads them, and prompt, endings and gold are the ones lm-eval's hellaswag scores."""
    rows = _rows("hellaswag")
    picks = [rows[0], _hellaswag_activitynet(rows), _hellaswag_wikihow(rows)]
    data = tmp_path / "eval"
    data.mkdir()
    (data / "hellaswag.jsonl").write_text("".join(json.dumps(r) + "\n" for r in picks), encoding="utf-8")
    from lm_eval.tasks import TaskManager, get_task_dict

    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata={"data_dir": str(data)})
    obj = get_task_dict([lm_eval_name("hellaswag")], tm)[lm_eval_name("hellaswag")]
    docs = list(obj.test_docs())
    assert len(docs) == 3
    # Row 0 of the split (MANIFEST.md): no markers, so the raw fields are what is scored.
    assert obj.doc_to_text(docs[0]) == "Roof shingle removal: A man is sitting on a roof. He"
    assert _gold(obj, docs[0]) == (rows[0]["endings"], 3)
    wikihow = docs[2]
    assert "[" not in obj.doc_to_text(wikihow) and not any("[" in c for c in obj.doc_to_choice(wikihow))
    for doc, row in zip(docs, picks):
        assert _gold(obj, doc) == expected("hellaswag", row) and obj.doc_to_text(doc) == hellaswag_query(row)


@pytest.mark.slow  # 6-8 s end to end; the fast tier covers the module with quicker tests
def test_tiny_checkpoint_on_five_real_examples_per_task(lm, tmp_path):
    data = tmp_path / "eval"
    data.mkdir()
    for task in PRESENT:
        (data / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _five(task)), encoding="utf-8")
    cfg = eval_config_from_dict({"tasks": "all", "data_dir": str(REAL)})
    assert list(cfg.tasks) == PRESENT and sorted(cfg.missing_tasks) == sorted(set(TASK_FIELDS) - set(PRESENT))
    res = lm_eval.simple_evaluate(model=lm, tasks=list(_tasks(data).values()), limit=5, log_samples=True)
    for task in PRESENT:
        name = lm_eval_name(task)
        samples = res["samples"][name]
        assert len(samples) == 5 and 0.0 <= res["results"][name]["acc,none"] <= 1.0
        for s in samples:
            choices, gold = expected(task, s["doc"])
            args = s["arguments"]  # one (context, continuation) request per choice
            assert len(args) == len(choices) == len(s["resps"])
            if task == "winogrande":  # partial scoring: the choices are contexts, the continuation is shared
                suffix = s["doc"]["sentence"].split("_", 1)[1].strip()
                assert s["target"] == suffix and args == [(c, " " + suffix) for c in choices]
            else:
                assert s["target"] == gold, f"{task}: {s['doc']}"
                assert [a[1] for a in args] == [" " + c for c in choices]  # one space: lm-eval's target_delimiter
            assert all(isinstance(r[0][0], float) for r in s["resps"])
