"""REPORT.md of a bootstrapping loop, from its report.json."""
from __future__ import annotations

import statistics


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render(report: dict) -> str:
    s = report["settings"]
    filter_batch = s.get("filter_batch_size", s["batch_size"])  # absent from reports of loops before it was set
    lines = ["# Bootstrapping on the shape world", "",
             f"World seed {s['world_seed']} ({s['world_size']}), pre-training seeds {', '.join(map(str, s['seeds']))}, "
             f"base model {s.get('base_epochs', s['pretrain_epochs'])} pre-training epochs, compared models "
             f"{s['pretrain_epochs']}, batch {s['batch_size']} (filter fine-tuning {filter_batch}), "
             f"{s['num_captions']} synthetic caption(s) per image, filter threshold {s['threshold']}."
             + (f" The base model starts from a vision encoder pre-trained {s['vision_epochs']} epochs on the labelled "
                f"set (the ImageNet role); the compared models from "
                f"{'it too' if s.get('compare_from_vision') else 'a random one'}." if "vision_epochs" in s else ""),
             ""]
    f = report["filter"]
    lines += ["## The filter on held-out web shards", "",
              f"{f['samples']} samples; ROC AUC of p(match), clean vs noisy: **{_num(f['auc'])}**.", "",
              "| web caption | samples | removed | kept | 95% interval |", "|---|---|---|---|---|"]
    for kind, entry in f["kinds"].items():
        removed = entry.get("removed")
        kept = entry.get("kept")
        interval = entry.get("interval")  # absent from the reports of loops run before it was measured
        lines.append(f"| {kind} | {entry['samples']} | {_pct(removed) if removed is not None else ''} | "
                     f"{_pct(kept) if kept is not None else ''} | "
                     f"{f'{_pct(interval[0])}-{_pct(interval[1])}' if interval else ''} |")
    c = report["captions"]
    lines += ["", "## Synthetic captions on held-out images", "",
              f"{c['captions']} captions (nucleus sampling): **{_pct(c['correct'])} fully correct** (count, colour, "
              f"shape and position); {c['kept']} kept by the filter, of which {_pct(c['kept_correct'])} correct.", "",
              "| caption | truth | correct |", "|---|---|---|"]
    lines += [f"| {_cell(e['caption'])} | {e['truth']} | {'yes' if e['correct'] else 'no'} |" for e in c["examples"]]
    b = report["bootstrapped"]
    lines += ["", "## Raw web data vs the bootstrapped dataset", "",
              f"The bootstrapped dataset: {b['samples']} images with {b['captions']} kept captions (web and synthetic).",
              "Each seed pre-trains one model on each dataset with the same recipe and the same number of steps "
              "(more epochs over the smaller bootstrapped set).", "",
              "| metric | raw (per seed) | bootstrapped (per seed) | raw mean | bootstrapped mean | bootstrapped better |",
              "|---|---|---|---|---|---|"]
    for name, entry in report["comparison"].items():
        lines.append(f"| {name} | {', '.join(_num(v) for v in entry['raw'])} | "
                     f"{', '.join(_num(v) for v in entry['boot'])} | {_num(entry['raw_mean'])} "
                     f"(sd {_num(_sd(entry['raw']))}) | {_num(entry['boot_mean'])} (sd {_num(_sd(entry['boot']))}) | "
                     f"{entry['boot_wins']}/{entry['seeds']} seeds |")
    lines += ["", "## The fine-tuned models on the test suite", "", "| task | metric | value |", "|---|---|---|"]
    for task, metrics in report["finetuned"].items():
        for metric, value in metrics.items():
            lines.append(f"| {task} | {metric} | {value if isinstance(value, str) else _num(value)} |")
    if "baselines" in report:  # absent from the reports of loops before NLVR2 and grounding were trained
        n, g = report["baselines"]["nlvr2"], report["baselines"]["refcoco"]
        lines += ["", "Beside NLVR2 and grounding, on the same test sets: NLVR2 chance 50%, always "
                  f"'{n['majority_label']}' (the training split's majority) {n['majority']:.1f}% over {n['test_pairs']} "
                  "pairs; grounding accuracy at IoU >= 0.5 of the centre box (the training boxes' mean size) and of "
                  "the image's largest object: " + "; ".join(f"{split} {b['centre']:.1f}% and {b['largest']:.1f}% "
                                                             f"({b['samples']} samples)" for split, b in g.items()) + "."]
    lines += ["", "## Time", "", "Each stage's seconds when it last ran (a resumed loop keeps those of the stages it "
              "skips).", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds} |" for stage, seconds in report["seconds"].items()]
    lines += ["", "Each training job inside its Ray Train run (loading its data, training, exporting; not Ray Train's "
              "start-up, which a run pays once for all its jobs).", "", "| training job | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds} |" for name, seconds in report.get("job_seconds", {}).items()]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _sd(values) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None
