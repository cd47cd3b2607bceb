"""The published numbers the package records (mudpt/engine/data/published.yaml): they agree with
each other and with the READMEs' averages, the check that says so finds a typing error, and a
report sets them beside ours only for runs of the same backbone and shot count."""

from __future__ import annotations

import json

import pytest
import yaml

from mudpt.core.errors import UserError
from mudpt.data.registry import available_datasets
from mudpt.engine import TrainConfig
from mudpt.engine.published import DEFAULT_FILE, load_published
from mudpt.core.vocabulary import harmonic_mean
from mudpt.engine.report import BENCHMARK_11, report
from mudpt.methods import available_methods

VIT_B16 = {"config.backbone": "ViT-B-16"}


def _entries(data):
    b2n = data["base2new"]
    yield from b2n["average"]
    for entries in b2n["per_dataset"].values():
        yield from entries
    for protocol in ("xd", "dg"):
        for entries in data[protocol]["by_source"].values():
            yield from entries


def test_package_numbers_agree_with_each_other_and_with_the_readme_averages():
    published = load_published()
    assert published.consistency_problems() == []
    data = yaml.safe_load(DEFAULT_FILE.read_text())
    # Names are the registries' names, so a run can ever match them.
    assert {e["method"] for e in _entries(data)} <= set(available_methods())
    datasets = set(data["base2new"]["per_dataset"]) | set(data["xd"]["by_source"]) | set(data["dg"]["by_source"])
    for protocol in ("xd", "dg"):
        for entries in data[protocol]["by_source"].values():
            for e in entries:
                datasets |= set(e["targets"])
    assert datasets <= set(available_datasets())
    # The per-dataset table covers the 11 datasets for each method it has, so the average check
    # above ran for every one of them (it skips a method missing from a dataset).
    per_dataset = data["base2new"]["per_dataset"]
    assert set(per_dataset) == set(BENCHMARK_11)
    methods = {e["method"] for e in per_dataset["imagenet"]}
    assert methods == {"zsclip", "coop", "cocoop", "kgcoop", "prograd", "maple", "promptsrc", "dept_coop", "dept_cocoop",
                       "dept_kgcoop", "dept_maple", "dept_promptsrc", "dept"}
    assert all({e["method"] for e in entries} == methods for entries in per_dataset.values())
    # Independent of the check's own code: MaPLe's 11 rows average to its README line.
    maple = [next(e for e in entries if e["method"] == "maple") for entries in per_dataset.values()]
    base = sum(e["base"] for e in maple) / 11
    new = sum(e["new"] for e in maple) / 11
    assert base == pytest.approx(82.28, abs=0.01) and new == pytest.approx(75.14, abs=0.01)
    assert harmonic_mean(base, new) == pytest.approx(78.55, abs=0.01)
    # and DePT's figure: its MaPLe + DePT rows average to its average line
    dept = [next(e for e in entries if e["method"] == "dept_maple") for entries in per_dataset.values()]
    assert sum(e["base"] for e in dept) / 11 == pytest.approx(84.85, abs=0.01)
    assert sum(e["new"] for e in dept) / 11 == pytest.approx(74.82, abs=0.01)
    xd = data["xd"]["by_source"]["imagenet"]
    assert all(len(e["targets"]) == 10 for e in xd)
    assert all(set(e["targets"]) == {"imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"}
               for e in data["dg"]["by_source"]["imagenet"])


@pytest.mark.parametrize("edit, expected", [
    # two digits swapped in one base accuracy: its HM no longer follows
    (lambda d: d["base2new"]["per_dataset"]["imagenet"][0].update(base=72.34), "imagenet, zsclip: hm 70.22"),
    # a consistent but wrong row (base and HM both retyped): only the average over datasets shows it
    (lambda d: d["base2new"]["per_dataset"]["dtd"][5].update(base=81.36, hm=68.52), "base2new, maple: the 11"),
    # one cross-dataset target off by 0.2
    (lambda d: d["xd"]["by_source"]["imagenet"][2]["targets"].update(dtd=46.69), "xd.by_source.imagenet, maple"),
])
def test_the_consistency_check_finds_a_typing_error(tmp_path, edit, expected):
    data = yaml.safe_load(DEFAULT_FILE.read_text())
    edit(data)
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    problems = load_published(path).consistency_problems()
    assert len(problems) == 1 and expected in problems[0]


def test_published_numbers_apply_to_their_backbone_and_shot_count_only():
    published = load_published()
    maple_dtd = published.base2new("dtd", "maple", VIT_B16, 16)
    assert (maple_dtd["base"], maple_dtd["new"], maple_dtd["hm"]) == (80.36, 59.18, 68.16)
    assert maple_dtd["source"] == "maple_paper" and "Table 1" in published.describe(maple_dtd)
    assert published.base2new("dtd", "maple", {"config.backbone": "ViT-B/16"}, 16) == maple_dtd  # OpenAI spelling
    assert published.base2new("dtd", "maple", {"config.backbone": "RN50"}, 16) is None
    assert published.base2new("dtd", "maple", VIT_B16, 4) is None
    assert published.base2new("dtd", "maple", {}, 16) is None  # no backbone recorded: no claim
    assert published.base2new("dtd", "zsclip", VIT_B16, 0)["hm"] == 56.37  # zero-shot uses no shots
    dg = published.transfer("dg", "imagenet", "promptsrc", VIT_B16, 16)
    assert dg["source_acc"] == 71.27 and dg["targets"]["imagenet_r"] == 77.80
    assert published.transfer("xd", "caltech101", "coop", VIT_B16, 16) is None  # the tables train on ImageNet


def _run(root, rel, method, dataset, shots, seed, acc, evaluations=(), backbone="ViT-B-16", subsample="all"):
    run = root / rel
    (run / "evaluations").mkdir(parents=True)
    cfg = TrainConfig(method=method, dataset=dataset, shots=shots, seed=seed, subsample=subsample,
                      backbone=backbone).to_dict()
    (run / "results.json").write_text(json.dumps({"accuracy": acc, "macro_f1": acc, "config": cfg}))
    for i, (ds, sub, a) in enumerate(evaluations):
        (run / "evaluations" / f"e{i}.json").write_text(json.dumps({"dataset": ds, "subsample": sub, "accuracy": a}))


def test_report_sets_the_transfer_tables_beside_ours(tmp_path):
    for seed in (1, 2):
        _run(tmp_path, f"xd/imagenet/maple/shots_16/seed_{seed}", "maple", "imagenet", 16, seed, 70.0,
             evaluations=[("caltech101", "all", 94.0), ("dtd", "all", 45.0 + seed)])
        _run(tmp_path, f"dg/imagenet/zsclip/shots_0/seed_{seed}", "zsclip", "imagenet", 0, seed, 66.0,
             evaluations=[(t, "all", 50.0) for t in ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")])
        # another backbone's run: no published row
        _run(tmp_path, f"xd/imagenet/coop/shots_16/seed_{seed}", "coop", "imagenet", 16, seed, 60.0,
             evaluations=[("caltech101", "all", 90.0), ("dtd", "all", 40.0)], backbone="RN50")
    md = report(tmp_path, plots=False)["markdown"].read_text()
    # MaPLe, Table 2: source 70.72, Caltech101 93.53, DTD 46.49; over these two targets 70.01
    published_avg = (93.53 + 46.49) / 2
    assert (f"| imagenet | *published* (maple_paper) (ours − published) | 16 | 70.72 (-0.72) | 93.53 (+0.47) | "
            f"46.49 (+0.01) | {published_avg:.2f} ({(94.0 + 46.5) / 2 - published_avg:+.2f}) |") in md
    assert md.count("*published*") == 2  # MaPLe's xd row and zero-shot CLIP's dg row, not RN50 CoOp's
    assert ("| imagenet | *published* (maple_paper) (ours − published) | 0 | 66.73 (-0.73)" in md
            and f"57.18 ({50.0 - (60.83 + 46.15 + 47.77 + 73.96) / 4:+.2f}) |" in md)
    assert "`maple_paper`: MaPLe (Khattak et al., CVPR 2023" in md
    tex = (tmp_path / "report.tex").read_text()
    assert (f"imagenet & \\emph{{published}} (maple\\_paper) & 16 & 70.72 (-0.72) & 93.53 (+0.47) & 46.49 (+0.01) & "
            f"{published_avg:.2f} ({(94.0 + 46.5) / 2 - published_avg:+.2f}) \\\\") in tex


def test_an_average_over_all_11_datasets_is_set_beside_the_readme_average(tmp_path):
    for dataset in BENCHMARK_11:
        _run(tmp_path, f"base2new/{dataset}/coop/shots_16/seed_1", "coop", dataset, 16, 1, 90.0,
             evaluations=[(dataset, "new", 60.0)], subsample="base")
    md = report(tmp_path, plots=False)["markdown"].read_text()
    ours = harmonic_mean(90.0, 60.0)
    assert (f"| coop | 16 | 90.00 | 60.00 | {ours:.2f} | 11 | 82.69 (+7.31) | 63.22 (-3.22) | 71.66 ({ours - 71.66:+.2f}) "
            f"| coop: maple_readme (the 11 datasets) |") in md
    assert "| imagenet | coop | 16 | 90.00 | 60.00 | 72.00 | 76.47 (+13.53) | 67.88 (-7.88) | 71.92 (+0.08) |" in md


def test_an_inconsistent_file_of_the_users_is_reported_and_a_wrong_type_refused(tmp_path):
    _run(tmp_path / "runs", "base2new/dtd/coop/shots_16/seed_1", "coop", "dtd", 16, 1, 80.0,
         evaluations=[("dtd", "new", 50.0)], subsample="base")
    mine = tmp_path / "mine.yaml"
    mine.write_text("format: mudpt-published/1\nsources: {paper: my paper}\nbase2new:\n  per_dataset:\n    dtd:\n"
                    "      - {method: coop, base: 80.0, new: 50.0, hm: 65.0, source: paper}\n")
    paths = report(tmp_path / "runs", plots=False, published=mine)
    assert any("dtd, coop: hm 65.0 but the harmonic mean of base 80.0 and new 50.0 is 61.54" in w
               for w in paths["warnings"])
    assert "| 80.00 (+0.00) | 50.00 (+0.00) | 65.00 (-3.46) | paper |" in paths["markdown"].read_text()
    mine.write_text("format: mudpt-published/1\nsources: {paper: my paper}\nbase2new:\n  per_dataset:\n    dtd:\n"
                    "      - {method: coop, base: 80.0, new: n/a, hm: 65.0, source: paper}\n")
    with pytest.raises(UserError, match="base2new.per_dataset.dtd, method coop: new must be a number"):
        report(tmp_path / "runs", plots=False, published=mine)
