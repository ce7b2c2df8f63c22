"""``python -m moda_lab.eval.data fetch OUT``, offline: the hub loader is replaced by tiny datasets in the hub layouts.

The converted files are read back by the tasks' own reader (moda_lab.eval.tasks.utils.load_local); a wrong count,
an unreachable hub (stubbed, and once for real with HF_DATASETS_OFFLINE=1) and a failure while writing each exit 2
with one line (the last one keeps its traceback), leaving OUT as it was. Where ../shared/data/eval is present,
real rows turned back into their hub layout convert to exactly the lines of the files there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from moda_lab.eval import data
from moda_lab.eval.tasks import TASK_FIELDS, data_dir
from moda_lab.eval.tasks.utils import load_local

ROOT = Path(__file__).resolve().parents[2]
ARC_CHOICES = {"text": ["dry", "wet", "cold", "hot"], "label": ["A", "B", "C", "D"]}

# two rows per task, in the layout of the hub dataset data.SOURCES names
HUB_ROWS: dict[str, list[dict]] = {
    "piqa": [
        {"goal": "Dry a shirt.", "sol1": "Hang it in the sun.", "sol2": "Put it in a pond.", "label": 0},
        {"goal": "Cool tea.", "sol1": "Boil it.", "sol2": "Add ice.", "label": 1},
    ],
    "hellaswag": [
        {
            "ind": 24 + i,
            "activity_label": "Roof shingle removal",
            "ctx_a": "A man is sitting on a roof.",
            "ctx_b": "he",
            "ctx": "A man is sitting on a roof. he",
            "endings": ["is using wrap.", "is ripping tiles off.", "holds a cube.", "starts [title] pulling."],
            "source_id": "activitynet~v_x",
            "split": "val",
            "split_type": "indomain",
            "label": str(3 - i),
        }
        for i in range(2)
    ],
    "winogrande": [
        {"sentence": "Sarah was better than Maria so _ got the easy cases.", "option1": "Sarah", "option2": "Maria",
         "answer": "2"},
        {"sentence": "The cup broke the plate because _ was hard.", "option1": "cup", "option2": "plate",
         "answer": "1"},
    ],
    "openbookqa": [
        {"id": f"8-34{i}", "question_stem": "Ice melts when it is", "choices": ARC_CHOICES, "answerKey": "D"}
        for i in range(2)
    ],
    "boolq": [  # google/boolq: answer is a bool
        {"question": "is the sun a star", "answer": True, "passage": "The Sun is the star at the centre."},
        {"question": "is ice hot", "answer": False, "passage": "Ice is frozen water."},
    ],
    "sciq": [
        {"question": "What conducts heat?", "distractor3": "wood", "distractor1": "air", "distractor2": "glass",
         "correct_answer": "metal", "support": "Metal conducts heat." if i else ""}
        for i in range(2)
    ],
    "arc_easy": [
        {"id": f"Mercury_{i}", "question": "Which dries a shirt?", "choices": ARC_CHOICES, "answerKey": "A"}
        for i in range(2)
    ],
    "arc_challenge": [
        {"id": "Mercury_7", "question": "Which is coldest?", "choices": ARC_CHOICES, "answerKey": "C"},
        {"id": "NYSEDREGENTS_1", "question": "Which is wet?", "choices": {"text": ["rain", "sand", "dust"],
         "label": ["1", "2", "3"]}, "answerKey": "1"},
    ],
    "copa": [  # aps/super_glue copa
        {"premise": "The man turned on the faucet.", "choice1": "The toilet filled.", "choice2": "Water flowed.",
         "question": "effect", "idx": 0, "label": 1},
        {"premise": "The girl got wet.", "choice1": "It rained.", "choice2": "It was sunny.", "question": "cause",
         "idx": 1, "label": 0},
    ],
    "mmlu": [
        {"question": "Find the degree of Q(sqrt(2)) over Q.", "subject": "abstract_algebra",
         "choices": ["0", "2", "4", "6"], "answer": 1},
        {"question": "Which is a noble gas?", "subject": "high_school_chemistry",
         "choices": ["He", "H", "O", "N"], "answer": 0},
    ],
}


def hub(rows: dict[str, list[dict]]):
    """A load_split stand-in: each source's rows as a datasets.Dataset, as load_dataset returns them."""
    calls = []

    def load_split(source: data.Source) -> datasets.Dataset:
        task = next(t for t, s in data.SOURCES.items() if s == source)
        calls.append(task)
        return datasets.Dataset.from_list(rows[task])

    load_split.calls = calls
    return load_split


@pytest.fixture
def fake_hub(monkeypatch):
    """The hub serving HUB_ROWS, the official sizes set to their counts."""
    loader = hub(HUB_ROWS)
    monkeypatch.setattr(data, "load_split", loader)
    monkeypatch.setattr(data, "OFFICIAL_ROWS", {t: len(r) for t, r in HUB_ROWS.items()})
    return loader


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        data.main(argv)
        code = 0
    except SystemExit as err:
        code = err.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())} if root.exists() else {}


def test_every_task_has_a_source_and_a_size():
    assert list(data.SOURCES) == list(TASK_FIELDS) == list(data.OFFICIAL_ROWS) == list(HUB_ROWS)


def test_fetch_writes_files_the_tasks_read(fake_hub, tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, err = run_main(["fetch", str(out)], capsys)
    assert (code, err) == (0, "")
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.jsonl" for t in TASK_FIELDS)  # no temp file left
    for task, rows in HUB_ROWS.items():
        read = load_local(task, data_dir=str(out))["test"]
        assert len(read) == len(rows)
        line = next(r for r in stdout.splitlines() if r.startswith(task + " "))
        assert line.split()[1:3] == [str(len(rows)), "written"] and str(out / f"{task}.jsonl") in line
    boolq = [json.loads(x) for x in (out / "boolq.jsonl").read_text().splitlines()]
    assert boolq == [
        {"question": "is the sun a star", "passage": "The Sun is the star at the centre.", "label": 1},
        {"question": "is ice hot", "passage": "Ice is frozen water.", "label": 0},
    ]
    copa = json.loads((out / "copa.jsonl").read_text().splitlines()[0])
    assert copa == HUB_ROWS["copa"][0]  # every other task: the hub row, values unchanged


def test_existing_files_are_kept_unless_overwrite(fake_hub, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "piqa.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}\n')
    code, stdout, _ = run_main(["fetch", str(out), "--tasks", "piqa,boolq"], capsys)
    assert code == 0 and fake_hub.calls == ["boolq"]  # the kept file is not downloaded again
    assert (out / "piqa.jsonl").read_text().count("\n") == 1
    assert "kept" in next(r for r in stdout.splitlines() if r.startswith("piqa "))
    code, stdout, _ = run_main(["fetch", str(out), "--tasks", "piqa", "--overwrite"], capsys)
    assert code == 0 and len(load_local("piqa", data_dir=str(out))["test"]) == 2
    assert "replaced" in next(r for r in stdout.splitlines() if r.startswith("piqa "))
    assert sorted(p.name for p in out.iterdir()) == ["boolq.jsonl", "piqa.jsonl"]


def test_a_wrong_count_writes_nothing(fake_hub, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "boolq.jsonl").write_text("old\n")
    before = snapshot(out)
    monkeypatch.setitem(data.OFFICIAL_ROWS, "copa", 3)
    code, _, err = run_main(["fetch", str(out), "--tasks", "boolq,copa", "--overwrite"], capsys)
    assert code == 2
    assert err == "eval data error: copa: aps/super_glue/copa validation has 2 rows, expected 3 (the official split " \
        "size); nothing was written\n"
    assert snapshot(out) == before  # boolq, fetched and good, is not written either; no temp file
    code, _, _ = run_main(["fetch", str(tmp_path / "new"), "--tasks", "copa"], capsys)
    assert code == 2 and not (tmp_path / "new").exists()


def test_a_row_without_a_field_the_task_reads_is_refused(fake_hub, tmp_path, capsys, monkeypatch):
    rows = {**HUB_ROWS, "mmlu": [{k: v for k, v in r.items() if k != "subject"} for r in HUB_ROWS["mmlu"]]}
    monkeypatch.setattr(data, "load_split", hub(rows))
    code, _, err = run_main(["fetch", str(tmp_path / "eval"), "--tasks", "mmlu"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "mmlu: cais/mmlu/all test row 0 lacks field(s) ['subject']" in err
    assert not (tmp_path / "eval").exists()


def test_an_unreachable_hub_is_one_line(tmp_path, capsys, monkeypatch):
    def offline(source):
        raise ConnectionError(f"Couldn't reach '{source.path}' on the Hub (OfflineModeIsEnabled)\nmore")

    monkeypatch.setattr(data, "load_split", offline)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "piqa.jsonl").write_text("complete\n")
    code, _, err = run_main(["fetch", str(out), "--overwrite"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(
        "eval data error: piqa: cannot load baber/piqa validation from the Hugging Face hub (ConnectionError: "
        "Couldn't reach 'baber/piqa' on the Hub (OfflineModeIsEnabled)); it needs network access"
    )
    assert "(now HF_DATASETS_OFFLINE=1, HF_HUB_OFFLINE unset); nothing was written\n" in err
    assert snapshot(out) == {"piqa.jsonl": b"complete\n"}


def test_the_real_loader_offline_exits_2_with_one_line(tmp_path):
    """datasets.load_dataset itself, offline and with an empty cache: quick, and the line names the dataset."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_DATASETS_CACHE", None)
    out = tmp_path / "eval"
    res = subprocess.run(
        [sys.executable, "-m", "moda_lab.eval.data", "fetch", str(out), "--tasks", "sciq"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("eval data error: sciq: cannot load allenai/sciq test from the Hugging Face hub")
    assert res.stderr.count("\n") == 1 and "HF_DATASETS_OFFLINE=1" in res.stderr
    assert not out.exists()


def test_a_failure_while_writing_leaves_out_as_it_was(fake_hub, tmp_path, monkeypatch):
    """A row that cannot be written (a bug: its traceback is kept): no task file replaced, no temp file left."""
    rows = {**HUB_ROWS, "copa": [{**r, "premise": object()} for r in HUB_ROWS["copa"]]}
    monkeypatch.setattr(data, "load_split", lambda source: rows[next(t for t, s in data.SOURCES.items() if s == source)])
    out = tmp_path / "eval"
    out.mkdir()
    (out / "boolq.jsonl").write_text("complete\n")
    with pytest.raises(TypeError, match="not JSON serializable"):
        data.fetch(out, ["boolq", "copa"], overwrite=True)
    assert snapshot(out) == {"boolq.jsonl": b"complete\n"}
    with pytest.raises(TypeError):
        data.fetch(tmp_path / "new", ["copa"])
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--tasks", "piqa,pika"], "eval data error: --tasks 'piqa,pika': unknown task(s) ['pika']; choose from ["),
        (["--tasks", ","], "eval data error: --tasks ',': unknown task(s) []; choose from ["),
    ],
)
def test_bad_tasks_are_one_line(argv, line, fake_hub, tmp_path, capsys):
    code, _, err = run_main(["fetch", str(tmp_path / "eval"), *argv], capsys)
    assert code == 2 and err.startswith(line) and err.count("\n") == 1
    assert fake_hub.calls == [] and not (tmp_path / "eval").exists()


def test_out_that_is_a_file_is_refused(fake_hub, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine\n")
    code, _, err = run_main(["fetch", str(out)], capsys)
    assert code == 2
    assert err == f"eval data error: {out} is not a directory; give the directory to write <task>.jsonl into\n"
    assert out.read_text() == "mine\n" and fake_hub.calls == []


REAL = data_dir()


@pytest.mark.skipif(not (REAL / "MANIFEST.md").is_file(), reason=f"no real eval data in {REAL}")
def test_real_rows_convert_to_the_lines_there(monkeypatch, tmp_path):
    """The first rows of each real file and its first non-ASCII one, turned back into the hub layout, convert to
    exactly those lines."""
    lines = {}
    for task in TASK_FIELDS:
        all_lines = (REAL / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()
        lines[task] = all_lines[:3] + [x for x in all_lines if not x.isascii()][:1]
    rows = {t: [json.loads(x) for x in ls] for t, ls in lines.items()}
    rows["boolq"] = [{"question": r["question"], "answer": bool(r["label"]), "passage": r["passage"]}
                     for r in rows["boolq"]]
    monkeypatch.setattr(data, "load_split", hub(rows))
    monkeypatch.setattr(data, "OFFICIAL_ROWS", {t: len(r) for t, r in rows.items()})
    data.fetch(tmp_path)
    for task in TASK_FIELDS:
        assert (tmp_path / f"{task}.jsonl").read_text(encoding="utf-8").splitlines() == lines[task], task
