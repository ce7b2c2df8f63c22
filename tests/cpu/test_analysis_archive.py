"""Archives of run dirs (moda_lab.analysis.archive): the round trip, the same bytes on every packing, a tampered
member refused in one line, and the analysis CLI reading an archive as it reads the folder."""

from __future__ import annotations

import io
import lzma
import os
import shutil
import sys
import tarfile
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import analysis_sweep as fx  # noqa: E402

from moda_lab.analysis.__main__ import main  # noqa: E402
from moda_lab.analysis.archive import CACHE_ENV, manifest_path, open_archive, pack  # noqa: E402
from moda_lab.errors import UsageError  # noqa: E402


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test extracts into its own cache, so no test reads another's extraction."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def small_sweep(root: Path) -> Path:
    """Two finished runs and the fixture's broken ones: enough for every branch of the loader."""
    return fx.build_fixture_sweep(root, seeds=(0,))


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_round_trip_gives_the_folder_back_and_the_manifest_lists_every_member(tmp_path):
    folder = small_sweep(tmp_path / "runs" / "study")
    archive = pack(folder, tmp_path / "results" / "study.tar.xz")
    opened = open_archive(archive)
    assert opened.name == "study" and files_of(opened) == files_of(folder)
    lines = manifest_path(archive).read_text().splitlines()
    members = [line.split("  ", 1)[1] for line in lines[:-1]]
    assert members == sorted(members) == sorted(f"study/{name}" for name in files_of(folder))
    assert lines[-1].endswith("  study.tar.xz")
    assert open_archive(archive) == opened  # the second open reads the checked extraction


def test_packing_the_same_files_again_gives_the_same_bytes(tmp_path):
    first = small_sweep(tmp_path / "a" / "study")
    second = small_sweep(tmp_path / "b" / "study")
    for path in second.rglob("*"):  # other times, as a copy made later would have
        os.utime(path, (1e9, 1e9))
    one, two = pack(first, tmp_path / "one" / "study.tar.xz"), pack(second, tmp_path / "two" / "study.tar.xz")
    assert one.read_bytes() == two.read_bytes()
    assert manifest_path(one).read_text() == manifest_path(two).read_text()
    with tarfile.open(one) as tar:
        assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in tar} == {(0, 0, 0, "", 0o644)}


def tamper(archive: Path, member: str) -> None:
    """Rewrite the archive with one member's bytes changed, keeping its manifest."""
    with tarfile.open(archive) as tar:
        items = [(info, tar.extractfile(info).read()) for info in tar]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in items:
            data = data.replace(b"finished", b"failed!!") if info.name == member else data
            tar.addfile(info, io.BytesIO(data))
    archive.write_bytes(lzma.compress(buffer.getvalue()))


def test_a_tampered_member_is_refused_in_one_line_naming_archive_and_member(tmp_path, own_cache, capsys):
    folder = small_sweep(tmp_path / "study")
    archive = pack(folder, tmp_path / "results" / "study.tar.xz")
    member = "study/moda-pre-L4-s0/meta.json"
    tamper(archive, member)
    with pytest.raises(UsageError, match=f"study.tar.xz: member '{member}' does not match its sha256"):
        open_archive(archive)
    out = tmp_path / "analysis"
    with pytest.raises(SystemExit) as exc:
        main([f"sweep_dir={archive}", f"out={out}"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("moda_lab.analysis: ") and str(archive) in err and member in err
    assert not out.exists()
    assert [p.name for p in own_cache.iterdir() if not p.name.startswith(".staging-")] == []  # nothing extracted


def test_an_archive_without_its_manifest_is_refused(tmp_path):
    archive = pack(small_sweep(tmp_path / "study"), tmp_path / "study.tar.xz")
    manifest_path(archive).unlink()
    with pytest.raises(UsageError, match=r"study.tar.xz: no manifest study.sha256"):
        open_archive(archive)


def test_the_cli_on_an_archive_writes_the_tidy_table_of_the_folder(tmp_path, capsys):
    """The archive stands for the folder beside it: its runs' paths are the folder's, so tidy.csv is the same."""
    folder = small_sweep(tmp_path / "results" / "study")
    attention = folder / "moda-pre-L4-s0" / "eval" / "last" / "attention.csv"  # read after loading, by its path
    attention.parent.mkdir(parents=True)
    attention.write_text("domain,windows,layer,head,depth_slots,depth_mass,sink_mass,sequence_mass\n"
                         "c4,2,0,0,0,0.0,0.5,1.0\nc4,2,1,0,1,0.25,0.25,0.75\n")
    archive = pack(folder, tmp_path / "results" / "study.tar.xz")
    assert main([f"sweep_dir={folder}", f"out={tmp_path / 'from_folder'}"]) == 0
    shutil.rmtree(folder)  # the archive alone
    assert main([f"sweep_dir={archive}", f"out={tmp_path / 'from_archive'}"]) == 0
    for name in ("tidy.csv", "runs.csv", "tables/attention_by_layer.csv"):
        assert (tmp_path / "from_archive" / name).read_bytes() == (tmp_path / "from_folder" / name).read_bytes()
    assert f"{fx.FIXTURE_RUNS - 12} runs loaded" in capsys.readouterr().out


def test_figures_are_png_unless_pdf_is_asked_for(tmp_path):
    archive = pack(small_sweep(tmp_path / "study"), tmp_path / "study.tar.xz")
    assert main([f"sweep_dir={archive}"]) == 0  # default out: <dir>/<name>_analysis
    figures = {p.suffix for p in (tmp_path / "study_analysis" / "figures").iterdir()}
    assert figures == {".png"}
    assert main([f"sweep_dir={archive}", f"out={tmp_path / 'paper'}", "pdf=true"]) == 0
    assert {p.suffix for p in (tmp_path / "paper" / "figures").iterdir()} == {".png", ".pdf"}
