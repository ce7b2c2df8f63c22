"""The task prompts as Python functions (moda_lab/eval/tasks/utils.py) equal the Jinja templates they replaced.

Until 2026-12-07 seven task YAMLs gave their prompts as Jinja templates, which lm-eval 0.4.13 compiles anew at
every use: 87 of the 124 s the ten tasks took with a model that does nothing. The templates are kept here as the
reference: rendered by lm-eval's own Jinja environment and post-processed as lm-eval's ConfigurableTask does
(a digit string becomes an int, a choice list is literal_eval'd), each must give what the function gives, on
every example of the real splits (../shared/data/eval; skipped where absent).
"""

from __future__ import annotations

import ast
import json

import pytest

lm_eval_utils = pytest.importorskip("lm_eval.utils")

from moda_lab.eval.tasks import TASK_DIR, data_dir  # noqa: E402
from moda_lab.eval.tasks import utils as prompts  # noqa: E402

ARC = ("Question: {{question}}\nAnswer:", "{{choices.label.index(answerKey)}}", "{{choices.text}}")
TEMPLATES = {  # task: (doc_to_text, doc_to_target, doc_to_choice) as the YAMLs had them; None: not a template
    "arc_easy": ARC,
    "arc_challenge": ARC,
    "openbookqa": ("{{question_stem}}", "{{choices.label.index(answerKey.lstrip())}}", "{{choices.text}}"),
    "boolq": ("{{passage}}\nQuestion: {{question}}?\nAnswer:", "{{label | int}}", None),
    "hellaswag": ("{{query}}", "{{gold}}", "{{options}}"),
    "piqa": ("Question: {{goal}}\nAnswer:", None, "{{[sol1, sol2]}}"),
    "sciq": ("{{support.lstrip()}}\nQuestion: {{question}}\nAnswer:", None,
             "{{[distractor1, distractor2, distractor3, correct_answer]}}"),
}
FUNCTIONS = {
    "arc_easy": (prompts.arc_doc_to_text, prompts.lettered_doc_to_target, prompts.lettered_doc_to_choice),
    "arc_challenge": (prompts.arc_doc_to_text, prompts.lettered_doc_to_target, prompts.lettered_doc_to_choice),
    "openbookqa": (prompts.openbookqa_doc_to_text, prompts.lettered_doc_to_target, prompts.lettered_doc_to_choice),
    "boolq": (prompts.boolq_doc_to_text, prompts.boolq_doc_to_target, None),
    "hellaswag": (prompts.hellaswag_doc_to_text, prompts.hellaswag_doc_to_target, prompts.hellaswag_doc_to_choice),
    "piqa": (prompts.piqa_doc_to_text, None, prompts.piqa_doc_to_choice),
    "sciq": (prompts.sciq_doc_to_text, None, prompts.sciq_doc_to_choice),
}


def _text(rendered: str):
    return ast.literal_eval(rendered) if rendered.isdigit() else rendered  # the tasks all have doc_to_choice


def _target(rendered: str):
    if rendered.isdigit():
        return ast.literal_eval(rendered)
    if len(rendered) >= 2 and rendered[0] == "[" and rendered[-1] == "]":
        try:
            return ast.literal_eval(rendered)
        except (SyntaxError, ValueError):
            return rendered
    return rendered


POST = (_text, _target, ast.literal_eval)


def _docs(task: str) -> list[dict]:
    path = data_dir() / f"{task}.jsonl"
    if not path.is_file():
        pytest.skip(f"no real eval data: {path} is absent")
    rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    if task == "hellaswag":
        rows = [{**row, **prompts.hellaswag_fields(row)} for row in rows]  # as load_local adds them
    return rows


@pytest.mark.parametrize("task", sorted(TEMPLATES))
def test_each_function_gives_what_its_template_rendered(task):
    docs = _docs(task)
    for template, function, post in zip(TEMPLATES[task], FUNCTIONS[task], POST):
        assert (template is None) == (function is None)
        if template is None:
            continue
        compiled = lm_eval_utils.env.from_string(template)  # lm-eval's environment, compiled once here
        for i, doc in enumerate(docs):
            want, got = post(compiled.render(**doc)), function(doc)
            assert got == want and type(got) is type(want), f"{task} example {i}: {got!r} != {want!r}"


def test_no_task_yaml_holds_a_template():
    """A template would be compiled at every use again (see the top)."""
    offenders = [p.name for p in TASK_DIR.glob("*.yaml") if "{{" in p.read_text(encoding="utf-8")]
    assert not offenders, f"Jinja templates in {offenders}: give the prompt as a utils.py function"
