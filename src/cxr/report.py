"""``reports/summary.md``: every variant side by side, published references, a model card."""
from __future__ import annotations

from collections.abc import Mapping

from cxr.data.labels import ABNORMAL, negative_name
from cxr.data.metadata import AGE_BANDS

# Published results on the FULL ChestX-ray14 dataset; never measured here.
PUBLISHED = (
    ("Wang et al. 2017 (ChestX-ray8 paper)", "ResNet-50, ImageNet-pretrained", "official split", "~0.74"),
    ("Rajpurkar et al. 2017 (CheXNet)", "DenseNet-121, ImageNet-pretrained", "random patient split", "0.841"),
    ("DenseNet-121 on the official split (e.g. Baltruschat et al. 2019)", "DenseNet-121", "official split",
     "~0.80"),
)

# Per-finding test AUROC on the FULL dataset, as tabulated in Rajpurkar et al. 2017 (CheXNet),
# Table 2: (Wang et al. 2017, CheXNet). Never measured here.
PER_FINDING = {
    "Atelectasis": (0.716, 0.8094), "Cardiomegaly": (0.807, 0.9248), "Effusion": (0.784, 0.8638),
    "Infiltration": (0.609, 0.7345), "Mass": (0.706, 0.8676), "Nodule": (0.671, 0.7802),
    "Pneumonia": (0.633, 0.7680), "Pneumothorax": (0.806, 0.8887), "Consolidation": (0.708, 0.7901),
    "Edema": (0.835, 0.8878), "Emphysema": (0.815, 0.9371), "Fibrosis": (0.769, 0.8047),
    "Pleural_Thickening": (0.708, 0.8062), "Hernia": (0.767, 0.9164),
}


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _auroc_cell(entry: Mapping) -> str:
    if entry.get("auroc") is None:
        return "n/a"
    ci = entry.get("auroc_ci95")
    text = f"{entry['auroc']:.2f}" + (f" ({ci['low']:.2f}–{ci['high']:.2f})" if ci else "")
    return text if entry.get("status", "ok") == "ok" else f"*{text}*"


def default_variant(candidates: Mapping[str, tuple[float | None, list]]) -> tuple[str | None, bool]:
    """What ``cxr predict`` and ``cxr serve`` use by default, from each variant's (validation
    decision AUROC, flags): the best AUROC among the variants without flags, else among all; and
    whether every variant is flagged."""
    scored = {v: (auroc, flags) for v, (auroc, flags) in candidates.items() if auroc is not None}
    clean = {v: auroc for v, (auroc, flags) in scored.items() if not flags}
    pool = clean or {v: auroc for v, (auroc, _) in scored.items()}
    return (max(pool, key=pool.get) if pool else None), not clean


def _over_seeds(s: Mapping) -> str:
    """Mean and t-interval of an AUROC over seeds, the interval clipped to [0, 1] (an AUROC's range)."""
    ci = s.get("ci95")
    return f"{s['mean']:.3f}" + (f" ({max(ci['low'], 0.0):.2f}–{min(ci['high'], 1.0):.2f})" if ci else "")


def seed_study_markdown(study: Mapping, models: Mapping[str, Mapping], size: int) -> list[str]:
    """Image variants against ``linear`` over several split seeds (``bench/seeds.py``'s
    ``reports/seeds.json``), and whether any image variant beats it on validation.
    ``models``: params.yaml's entries, to tell the variants measured with other settings;
    ``size``: this run's image size."""
    rows = study["variants"]
    linear_grid = [v for v, r in rows.items() if r["params"]["family"] == "linear" and v not in models]
    shown = [v for v in rows if v in models or v not in linear_grid]
    shown.sort(key=lambda v: -rows[v]["over_seeds"]["val_abnormal_auroc"]["mean"])
    lines = ["## Image models against `linear` (validation, over split seeds)", "",
             f"Measured by `make seeds` (`bench/seeds.py`, not part of `dvc repro`): each variant trained on "
             f"{len(study['seeds'])} patient splits of the {study['images']} (split seeds "
             f"{', '.join(map(str, study['seeds']))}) at {study['image_size']} px; abnormal AUROC as the mean over "
             "the seeds with its 95% t-interval. Chosen on validation; test shown, never chosen on. "
             f"Not shown: {len(linear_grid)} other `linear` settings (thumbnail size × components × C, all in "
             "`reports/seeds.json`); params.yaml's `linear` is the best of them on validation."
             + ("" if study["image_size"] == size else f" **Measured at {study['image_size']} px; this run "
                                                        f"uses {size} px.**"), "",
             "| variant | family | val abnormal AUROC | test abnormal AUROC | seconds per fit | in params.yaml |",
             "|---|---|---|---|---|---|"]
    for v in shown:
        r, o = rows[v], rows[v]["over_seeds"]
        where = ("yes" if dict(models[v]) == r["params"] else "**no: measured with other settings**") \
            if v in models else "no (a tuning candidate)"
        lines.append(f"| {v} | {r['params']['family']} | {_over_seeds(o['val_abnormal_auroc'])} | "
                     f"{_over_seeds(o['test_abnormal_auroc'])} | {o['seconds']['mean']:.0f} | {where} |")
    images = [v for v in shown if rows[v]["params"]["family"] != "linear"]
    linear = [v for v in shown if rows[v]["params"]["family"] == "linear"]
    if images and linear:
        score = {v: rows[v]["over_seeds"]["val_abnormal_auroc"]["mean"] for v in shown}
        image, base = images[0], linear[0]   # each the best of its kind on validation
        verdict = "beats" if score[image] > score[base] else "does NOT beat"
        lines += ["", f"**The best image variant, `{image}` ({score[image]:.3f}), {verdict} `{base}` "
                  f"({score[base]:.3f}) on validation averaged over the seeds.**"
                  + ("" if score[image] > score[base] else " `cxr predict` and `cxr serve` therefore use no "
                     "image model by preference: their default is simply the variant whose decision scores "
                     "best on this run's validation split, `linear` included.")]
    return lines + [""]


_LEVEL_NAMES = {"under_40": "age < 40", "40_to_60": "age 40–60", "over_60": "age > 60"}


def subgroup_markdown(evals: Mapping[str, dict], positive: str) -> list[str]:
    """The decision's test AUROC within each sex, age band and view position, per variant."""
    groups = evals[next(iter(evals))][positive].get("subgroups")
    if not groups:
        return []
    # Metrics files sort their keys: put age bands back in age order.
    order = {band: i for i, band in enumerate(AGE_BANDS)}
    columns = [(a, level) for a in ("sex", "age", "view") if a in groups
               for level in sorted(groups[a], key=lambda level: (order.get(level, 0), level))]
    head = " | ".join(f"{_LEVEL_NAMES.get(level, level)} ({groups[a][level]['images']} img, "
                      f"{groups[a][level]['positives']} pos)" for a, level in columns)
    lines = [f"## {positive[0].upper() + positive[1:]} AUROC by subgroup (test split, 95% CI)", "",
             "Sex, age band and view position from the metadata; intervals from the same patient bootstrap, "
             "restricted to the subgroup's images. A model much worse in one subgroup (AP views are bedside, "
             "sicker patients) is not ready for it. Pictures of the data: `reports/data/`.", "",
             f"| variant | {head} |", "|---|" + "---|" * len(columns)]
    for v, e in evals.items():
        cells = " | ".join(_auroc_cell(e[positive]["subgroups"][a][level]) for a, level in columns)
        lines.append(f"| {v} | {cells} |")
    return lines + ["", "![labels per split](data/labels_per_split.png)", "",
                    "![age and sex per split](data/age_sex.png)", ""]


EXPERT_MIN_IMAGES = 20   # fewer test images with expert labels: the section is left out (its AUROCs are noise)


def expert_markdown(evals: Mapping[str, dict]) -> list[str]:
    """AUROC against Google's 2019 expert labels beside the NLP labels, on the same test images;
    nothing when fewer than ``EXPERT_MIN_IMAGES`` test images have them."""
    expert = {v: e["expert_labels"] for v, e in evals.items() if "expert_labels" in e}
    rated = max((f["images"] for e in expert.values() for f in e.values()), default=0)
    if rated < EXPERT_MIN_IMAGES:
        return [f"Expert labels (Google 2019): {rated} test image(s) have them, fewer than {EXPERT_MIN_IMAGES}; "
                "not reported (`metrics/eval/<variant>.json` holds them).", ""] if expert else []
    variants, first = list(expert), next(iter(expert.values()))
    lines = ["## Expert labels (Google 2019, radiologist-adjudicated) beside the NLP labels", "",
             f"On the {rated} test images that have both, each variant's score for the finding (noisy-OR of the NIH "
             "outputs named) against the experts' labels and against the NLP labels. Airspace opacity ← "
             "Consolidation, Infiltration, Pneumonia is this project's mapping; NIH has no fracture finding.", "",
             "| finding | images | expert pos | NLP pos | NLP agrees | "
             + " | ".join(f"{v} vs expert | {v} vs NLP" for v in variants) + " |",
             "|---|---|---|---|---|" + "---|---|" * len(variants)]
    for finding, f in first.items():
        cells = " | ".join(f"{_auroc_cell(expert[v][finding]['expert'])} | {_auroc_cell(expert[v][finding]['nlp'])}"
                           if "expert" in expert[v][finding] else f"{expert[v][finding]['status']} | "
                           for v in variants)
        lines.append(f"| {finding} | {f['images']} | {f['expert_positives']} | {f.get('nlp_positives', 'n/a')} | "
                     f"{_num(f.get('nlp_agreement'), 2)} | {cells} |")
    return lines + [""]


def summary_markdown(evals: Mapping[str, dict], trains: Mapping[str, dict], exports: Mapping[str, dict],
                     data: Mapping[str, object], seed_study: Mapping | None = None,
                     models: Mapping[str, Mapping] | None = None) -> str:
    """The report as markdown. ``evals``/``trains``/``exports`` map variant -> that stage's metrics JSON;
    ``seed_study``: ``reports/seeds.json``, with ``models``, params.yaml's entries.

    Results only: timings depend on the machine, so they stay in ``reports/timings/``
    and the report is the same wherever the same results are restored or reproduced.
    """
    variants = list(evals)
    lines = ["# cxr-pipeline: results across model variants", "",
             f"Data: {data['source']} — {data['images']} images, {data['patients']} patients; "
             f"split {data['split']} (test: {data['test_images']} images). Image size {data['size']} px.", ""]
    positive = evals[variants[0]]["decision"] if variants else ABNORMAL
    negative = negative_name(positive)
    decisions = {v: evals[v][positive] for v in variants}
    if variants:
        d = decisions[variants[0]]
        q = d["target_prevalence"]
        if abs(d["prevalence"] - q) > 0.05:
            lines += [f"**Enriched test split: {d['prevalence']:.0%} {positive} against {q:.0%} where the model is to "
                      f"be used (`evaluate.prevalence`). F-beta, PPV and the triage counts of this split do not "
                      f"transfer; the PPV, NPV and counts per 1,000 below are at {q:.2f}.**", ""]
    flagged = {v: evals[v]["flags"] for v in variants if evals[v]["flags"]}
    if flagged:
        lines += ["**Flagged (do not act on these decisions; `cxr predict` / `cxr serve` say so beside every "
                  "answer):**", ""]
        lines += [f"- **{v}**: " + "; ".join(flag_lines(f)) for v, f in flagged.items()] + [""]

    lines += [f"## {positive[0].upper() + positive[1:]} vs {negative} (triage view)", "",
              "Threshold chosen on the validation split only; every figure with its patient-bootstrap 95% interval "
              "(the threshold's: re-chosen on each bootstrap round of the validation patients). Test figures; "
              f"PPV and NPV at prevalence {q:.2f}." if variants else "", "",
              "| variant | test AUROC | val AUROC | threshold | sensitivity | specificity | PPV | NPV | "
              "ECE before → after | vs metadata baseline | epochs |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        a = decisions[v]
        op, cal = a["at_threshold"], a["calibration"]
        verdict = (a["baselines"].get("metadata") or {}).get("model_minus_baseline")
        beats = "n/a" if verdict is None else (
            f"{verdict['verdict']} ({_num(verdict['difference'], 2)}{_ci(verdict['ci95'], 2)})")
        name = f"**{v} (flagged)**" if v in flagged else v
        ece = (f"{_num(cal['before']['ece'])} → " if cal.get("before") else "") + _num(cal["after"]["ece"])
        lines.append(f"| {name} | {_auroc_cell(a)} | {_auroc_cell(a['val'])} | {op['threshold']:.3f}"
                     f"{_ci(a['threshold_ci95'])} ({a['threshold_method']}) | {_figure(op, 'sensitivity')} | "
                     f"{_figure(op, 'specificity')} | {_figure(op, 'ppv_at_prevalence')} | "
                     f"{_figure(op, 'npv_at_prevalence')} | {ece} | {beats} | {trains.get(v, {}).get('epochs_run', 'n/a')} |")
    if variants:
        levels = list(decisions[variants[0]]["specificity_at_sensitivity"])
        lines += ["", "### What triage would save (test split, read off its ROC curve)", "",
                  f"At each sensitivity: the test specificity (95% CI), and per 1,000 exams at prevalence {q:.2f}, "
                  f"the {negative} exams that could be set aside while at most the stated number of {positive} "
                  "exams is missed. The "
                  "threshold is set on the test split here: what the model can do, not a validated operating "
                  "point (the table above is).", "",
                  "| variant | " + " | ".join(f"sensitivity {float(lv):.2f}" for lv in levels) + " |",
                  "|---|" + "---|" * len(levels)]
        for v in variants:
            cells = []
            for lv in levels:
                r = decisions[v]["specificity_at_sensitivity"][lv]
                n = r["per_1000"]
                cells.append(f"specificity {_num(r['specificity'])}{_ci(r['specificity_ci95'], 2)}: "
                             f"{n['normal_set_aside']:.0f} {negative} set aside per 1,000, ≤ "
                             f"{n['abnormal_missed_at_most']:.0f} {positive} missed")
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        base = decisions[variants[0]]["baselines"]
        lines += ["", f"Trivial baselines on the same test split: always flag {positive} → sensitivity "
                  f"{_num(base['always_positive']['sensitivity'])}, specificity "
                  f"{_num(base['always_positive']['specificity'])}, F-beta {base['always_positive']['fbeta']:.3f}; "
                  f"flag at random at the prevalence ({base['prevalence']['prevalence']:.3f}) → AUROC 0.5.", ""]
        if "metadata" in base:
            m, f = base["metadata"], base["metadata_with_follow_up"]
            better = [v for v in variants if (decisions[v]["baselines"]["metadata"].get("model_minus_baseline")
                                              or {}).get("verdict") == "better"]
            lines += [f"**Without the image** (gradient boosting on {m['train_rows']:,} rows of the official "
                      f"metadata, {m['train_patients']:,} patients in neither val nor test), {positive} AUROC on "
                      f"the same test images: age, sex and view position (what a DICOM header carries) "
                      f"**{_auroc_cell(m)}**; adding the follow-up number {_auroc_cell(f)} — a dataset "
                      "artifact (no scanner writes it), not usable at inference. "
                      + (f"**Beat it** (the paired-bootstrap interval of the AUROC difference above 0): "
                         f"{', '.join(better)}. " if better else "**No variant beats it** (the paired-bootstrap "
                         "interval of every AUROC difference reaches 0). ")
                      + "A model that does not has not shown that it learnt anything from the pixels.", ""]
        backwards = {v: evals[v]["below_chance_findings"] for v in variants if evals[v]["below_chance_findings"]}
        if backwards:
            lines += ["**Findings ranked below chance** (test AUROC interval wholly under 0.5: the model orders "
                      "these images backwards): " + "; ".join(f"{v}: {', '.join(f)}" for v, f in backwards.items())
                      + ".", ""]
        best, all_flagged = default_variant({v: (decisions[v]["val"]["auroc"], evals[v]["flags"]) for v in variants})
        if best is not None:
            why = ("**every variant is flagged**, so it is only the least bad: the best validation "
                   f"{positive} AUROC of them" if all_flagged else
                   f"the best validation {positive} AUROC among the variants without flags")
            lines += [f"Default model of `cxr predict` / `cxr serve`: **{best}**, {why} "
                      f"({decisions[best]['val']['auroc']:.3f}).", ""]
    if seed_study is not None:
        lines += seed_study_markdown(seed_study, models or {}, data["size"])
    if variants:
        lines += subgroup_markdown(evals, positive) + expert_markdown(evals)

    lines += ["## AUROC per finding (test split, 95% CI from a patient-level bootstrap)", "",
              "Italic: fewer test positives than `evaluate.min_positives`; shown, not in the mean. "
              "**Wang 2017†** (ChestX-ray8, ResNet-50, official split) and **CheXNet†** (Rajpurkar et al. "
              "2017, DenseNet-121, random patient split): published test AUROC on all of ChestX-ray14 with "
              "ImageNet pretraining, as tabulated in the CheXNet paper — full-data references, NOT measured "
              "here (other splits, 200× the data, pretrained weights).", "",
              "| finding | positives | " + " | ".join(variants) + " | Wang 2017† | CheXNet† |",
              "|---|---|" + "---|" * len(variants) + "---|---|"]
    findings = list(evals[variants[0]]["per_class"]) if variants else []
    for f in findings:
        positives = evals[variants[0]]["per_class"][f]["positives"]
        cells = " | ".join(_auroc_cell(evals[v]["per_class"][f]) for v in variants)
        wang, chexnet = PER_FINDING.get(f, (None, None))
        lines.append(f"| {f} | {positives} | {cells} | {_num(wang)} | {_num(chexnet, 4)} |")
    means = " | ".join(f"**{_num(evals[v]['mean_auroc'], 2)}** ({evals[v]['mean_auroc_classes']} classes)"
                       for v in variants)
    published = [PER_FINDING[f] for f in findings if f in PER_FINDING]
    published_means = (f"{_num(sum(w for w, _ in published) / len(published))} | "
                       f"{_num(sum(c for _, c in published) / len(published), 4)}") if published else "| "
    lines += [f"| **mean** | | {means} | {published_means} |", ""]

    if exports:
        lines += ["## Exported models (size, agreement with Keras on the test split)", "",
                  "CPU latency per image: `reports/timings/export/<variant>.json` (this machine) and `make bench`.", "",
                  "| variant | format | size MB | max abs diff | mean AUROC Δ vs Keras |",
                  "|---|---|---|---|---|"]
        for v, e in exports.items():
            for fmt, m in e.get("tflite", {}).items():
                lines.append(f"| {v} | TFLite {fmt} | {_num(m['size_mb'], 2)} | "
                             f"{_num(m['max_abs_diff'], 4)} | {_num(m['mean_auroc_delta'], 4)} |")
            if "coreml" in e:
                lines.append(f"| {v} | Core ML | {_num(e['coreml']['size_mb'], 2)} | spec checked (predicts on "
                             "macOS only) | |")
        lines.append("")

    lines += ["## Published references (full dataset — NOT measured here)", "",
              "Mean AUROC over the 14 findings as published, on all 112,120 images with ImageNet "
              "pretraining. They are context, not a comparison: the bundled sample is 0.5% of the data and "
              "the offline default trains from random initialization.", "",
              "| source | model | split | mean AUROC |", "|---|---|---|---|"]
    lines += [f"| {s} | {m} | {sp} | {a} |" for s, m, sp, a in PUBLISHED]
    if variants and best is not None:
        lines += ["", model_card(best, evals[best], {"data": data["source"], "images": data["split_images"]})]
    lines += ["", ABOUT_MODELS]
    return "\n".join(lines) + "\n"


def _ci(ci: Mapping | None, digits: int = 3) -> str:
    return f" (95% CI {ci['low']:.{digits}f}–{ci['high']:.{digits}f})" if ci else ""


def _figure(op: Mapping, key: str) -> str:
    return f"{_num(op.get(key))}{_ci(op.get(key + '_ci95'))}"


def flag_lines(flags: list[Mapping]) -> list[str]:
    """Each flag as one line: what is wrong and on which split."""
    return [f"{f['flag'].replace('_', ' ')} ({f['split']}): {f['detail']}" for f in flags]


def model_card(variant: str, evaluation: Mapping, source: Mapping) -> str:
    """A model card from the run's own figures: ``evaluation`` is the variant's
    ``metrics/eval/<variant>.json``, ``source`` where it came from (``data``, ``images`` per split)."""
    positive = evaluation["decision"]
    d = evaluation[positive]
    op, val_op = d["at_threshold"], d["val_at_threshold"]
    q = d["target_prevalence"]
    images = source["images"]
    cal = d["calibration"]
    gaps = []
    for attribute, levels in (d.get("subgroups") or {}).items():
        scored = {k: v["auroc"] for k, v in levels.items() if v.get("auroc") is not None}
        if len(scored) > 1:
            hi, lo = max(scored, key=scored.get), min(scored, key=scored.get)
            gaps.append(f"{attribute}: {_LEVEL_NAMES.get(lo, lo)} {scored[lo]:.2f} vs {_LEVEL_NAMES.get(hi, hi)} "
                        f"{scored[hi]:.2f} (gap {scored[hi] - scored[lo]:.2f})")
    flags = flag_lines(evaluation["flags"])
    enriched = abs(d["prevalence"] - q) > 0.05
    lines = [
        f"## Model card: {variant}", "",
        f"- **Data**: NIH ChestX-ray14 ({source['data']}), split by patient: {images['train']} train, "
        f"{images['val']} validation, {images['test']} test images. Labels mined from reports by NLP (noisy).",
        f"- **Decision**: {positive} vs {negative_name(positive)}; {positive} prevalence {d['prevalence']:.3f} on "
        f"test, {d['val']['prevalence']:.3f} on validation; {q:.3f} where it is to be used (`evaluate.prevalence`)"
        + (". **The test split is enriched: F-beta, PPV and counts on it do not transfer; use the figures at "
           f"{q:.2f}.**" if enriched else "."),
        f"- **Discrimination**: {positive} AUROC {_num(d['auroc'])}{_ci(d['auroc_ci95'])} on test, "
        f"{_num(d['val']['auroc'])}{_ci(d['val']['auroc_ci95'])} on validation.",
        f"- **Operating point** ({d['threshold_method']}, chosen on validation): threshold {op['threshold']:.3f}"
        f"{_ci(d['threshold_ci95'])}. Test: sensitivity {_figure(op, 'sensitivity')}, specificity "
        f"{_figure(op, 'specificity')}, PPV {_figure(op, 'ppv')}, NPV {_figure(op, 'npv')}; at prevalence "
        f"{q:.2f}: PPV {_figure(op, 'ppv_at_prevalence')}, NPV {_figure(op, 'npv_at_prevalence')}. Validation: "
        f"sensitivity {_figure(val_op, 'sensitivity')}, specificity {_figure(val_op, 'specificity')}.",
        f"- **Calibration** ({cal.get('method', 'none')}, fitted on validation, folded into the model): "
        f"test ECE {_num(cal['after']['ece'])}{_ci(cal['after']['ece_ci95'])}"
        + (f", before calibration {_num(cal['before']['ece'])}{_ci(cal['before']['ece_ci95'])}" if cal["before"] else "")
        + ".",
        "- **Subgroup gaps** (test AUROC): " + ("; ".join(gaps) if gaps else "none measurable") + ".",
        "- **Flags**: " + ("**" + "; ".join(flags) + "**" if flags else "none") + ".",
        "- **Must not be used for**: diagnosis, or any decision without a radiologist; images other than frontal "
        "(PA/AP) chest radiographs; populations, scanners or prevalences unlike NIH's without re-validation"
        + ("; acting on its decisions at all while it carries the flags above" if flags else "") + ".",
    ]
    return "\n".join(lines) + "\n"


ABOUT_MODELS = """## About these models

- **Data**: NIH ChestX-ray14 (Wang et al., CVPR 2017): frontal chest X-rays from the NIH Clinical Center,
  labels for 14 findings mined from radiology reports by NLP. Splits are by patient; no patient is in two
  splits.
- **Intended use**: research, and triage support (ordering a reading list, flagging likely-normal studies
  for a second look) under a radiologist's supervision. **Not for diagnosis.**
- **Label noise**: NLP-mined labels are imperfect (estimated accuracy above 90% for most findings in the
  original paper; expert re-reads such as Google's 2019 adjudicated labels disagree on a share of images).
  Metrics here are agreement with those labels, not with ground truth.
- **Small data**: findings with a handful of test positives carry very wide intervals (see the per-finding
  table). The offline default starts from random weights and trains for minutes on a CPU: its numbers show
  the pipeline works end to end, not clinical performance. Rerun at full scale (see README).
- **Thresholds** are chosen on the validation split only and reported on the test split.
"""
