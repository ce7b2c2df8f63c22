"""The paper apart from the generic analysis (issue 31): moda_lab.analysis imports nothing of moda_paper and holds
none of its numbers; it meets the paper only through reference.Reference, which the command loads by name
(``reference=``, default moda_paper; ``none``: no comparison)."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import analysis_sweep as fx  # noqa: E402

from helpers import ROOT  # noqa: E402
from moda_lab.analysis.__main__ import main  # noqa: E402
from moda_lab.analysis.reference import load_reference, verdict, verdict_words  # noqa: E402
from moda_paper import PAPER_TABLE6, TABLE6  # noqa: E402

ANALYSIS = ROOT / "moda_lab" / "analysis"
PAPER = "moda_paper"


def paper_imports(path: Path) -> list[str]:
    """Every import of moda_paper in a file, wherever it stands (module level, functions, TYPE_CHECKING blocks)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        found += [f"{path.name}:{node.lineno} {n}" for n in names if n == PAPER or n.startswith(PAPER + ".")]
    return found


def test_the_generic_analysis_imports_nothing_of_the_paper(tmp_path):
    modules = sorted(ANALYSIS.rglob("*.py"))
    assert len(modules) > 10 and ANALYSIS / "pipeline.py" in modules
    assert [hit for path in modules for hit in paper_imports(path)] == []
    # Nor does the rest of moda_lab or moda_kernels: moda_paper sits above them, so no import cycle runs through it.
    others = [p for pkg in ("moda_lab", "moda_kernels") for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert [hit for path in others for hit in paper_imports(path)] == []
    # The walk sees an import hidden in a function or under TYPE_CHECKING.
    hidden = tmp_path / "hidden.py"
    hidden.write_text("if TYPE_CHECKING:\n    import moda_paper.table6\ndef f():\n    from moda_paper import TABLE6\n")
    assert paper_imports(hidden) == ["hidden.py:2 moda_paper.table6", "hidden.py:4 moda_paper"]


def test_the_generic_analysis_holds_none_of_the_papers_numbers():
    """No Table 6 value (val loss or params, as written there) in any source of the generic package; moda_paper is
    named once, as the command's default reference."""
    numbers = {f"{r.val_loss:.4f}" for r in PAPER_TABLE6} | {f"{r.params_m:.2f}" for r in PAPER_TABLE6}
    for path in sorted(ANALYSIS.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert not [n for n in numbers if n in text], path.name
    named = {p.name for p in ANALYSIS.rglob("*.py") if 'DEFAULT_REFERENCE = "moda_paper"' in p.read_text()}
    assert named == {"__main__.py"}


def test_importing_the_analysis_loads_no_paper_module():
    code = "import sys, moda_lab.analysis, moda_lab.analysis.__main__; print(sorted(m for m in sys.modules if m.startswith('moda_paper')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_verdict_is_a_function_of_the_mean_the_corrected_p_and_the_expected_sign():
    words = verdict_words("paper's")
    assert words[0] == "resolved, paper's sign" and words[-1] == "untested" and len(set(words)) == 5
    assert verdict(-0.05, 0.01) == verdict(0.05, 0.01, expected_sign=1) == "resolved, expected sign"
    assert verdict(-0.05, 0.01, expected="paper's") == words[0]
    assert verdict(-0.05, 0.01, expected_sign=1) == "resolved, opposite sign"
    assert verdict(0.05, 0.2, expected_sign=1) == "same sign, not resolved"
    assert verdict(0.05, 0.2) == "opposite sign, not resolved"
    assert verdict(0.05, 0.01, alpha=0.01) == "opposite sign, not resolved"  # resolved needs p < alpha
    assert verdict(-0.05, math.nan) == verdict(-0.05, 0.001, why_untested="not run") == "untested"
    with pytest.raises(ValueError, match="expected_sign=0"):
        verdict(-0.05, 0.01, expected_sign=0)


def test_references_load_by_name():
    assert load_reference("moda_paper") is TABLE6 and load_reference("moda_paper:TABLE6") is TABLE6
    assert load_reference("none") is None


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return fx.build_fixture_sweep(tmp_path_factory.mktemp("ref") / "sweep")


def test_the_command_compares_with_the_paper_by_default_and_with_nothing_on_none(sweep, tmp_path):
    assert main([f"sweep_dir={sweep}", f"out={tmp_path / 'paper'}"]) == 0
    assert "### The paper's Table 6 orderings" in (tmp_path / "paper" / "report.md").read_text()
    assert (tmp_path / "paper" / "tables" / "paper_table6_orderings.md").is_file()
    assert main([f"sweep_dir={sweep}", f"out={tmp_path / 'bare'}", "reference=none"]) == 0
    report = (tmp_path / "bare" / "report.md").read_text()
    assert "Table 6 orderings" not in report and "cannot resolve gaps of a few hundredths of a nat" in report
    assert not (tmp_path / "bare" / "tables" / "paper_table6_orderings.md").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["reference=moda_nowhere"],
            "reference='moda_nowhere': no module 'moda_nowhere'; allowed: MODULE or MODULE:NAME",
        ),
        (["reference=moda_paper:NOPE"], "reference='moda_paper:NOPE': moda_paper has no NOPE; allowed:"),
        (["reference=none", "untested=post"], "bad argument 'untested=post'; expected key=value with key in"),
    ],
    ids=["no-module", "no-name", "option-without-its-reference"],
)
def test_a_bad_reference_is_one_line_exit_2_and_writes_nothing(sweep, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main([f"sweep_dir={sweep}", f"out={out}", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith(f"moda_lab.analysis: {message}")
    assert not out.exists()
