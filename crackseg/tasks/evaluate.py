"""Evaluation of a checkpoint on a dataset split: the body of ``evaluate.py``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from crackseg.data.folder import distractor_mask, split_sources
from crackseg import metrics
from crackseg.inference.backends import predictor_from_config
from crackseg.models.thresholds import key_scales, scales_key, write_threshold
from crackseg.io import atomic_write, atomic_write_bytes, read_pair, write_csv
from crackseg.measure import JointRule, take_joints
from crackseg.options import check_inference_options

log = logging.getLogger(__name__)

PHOTO_FIELDS = ["photo", "source", "width", "height", "scales", "crack_px", "pred_px", "dice", "iou", "precision",
                "recall", "f1_tol", "best_threshold", "best_f1", "joint_px", "distractor_fp_px", "seconds"]


def _data_name(data: DictConfig) -> str:
    return data.root if data.get("sources") is None else "+".join(data.sources)


def _plot_pr_curve(path: Path, precision: np.ndarray, recall: np.ndarray, points: dict[str, int], title: str) -> None:
    """The pooled PR curve with the named thresholds (levels) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot(recall, precision, lw=2)
    for (label, level), colour in zip(points.items(), ("red", "black", "green", "orange")):
        ax.plot(recall[level], precision[level], "o", color=colour, label=f"{label} ({level / metrics.LEVELS:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    atomic_write(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    plt.close(fig)


def _choose(histograms_by_dataset: dict[str, list[np.ndarray]], cfg: DictConfig) -> dict:
    """The threshold ``cfg.threshold_rule`` chooses on these photos (one scale set's), and their pooled
    figures there; ``score`` is the rule's: F1, or for the recall rule the mean precision. The rule is
    named as stored with the threshold: the recall rule with its target, ``recall>=0.8``."""
    pooled = [h for hists in histograms_by_dataset.values() for h in hists]
    ods_f1, ods_threshold, _ = metrics.ods(pooled)
    by_dataset = list(histograms_by_dataset.values())
    if cfg.threshold_rule == "pooled":
        score, threshold = ods_f1, ods_threshold
    elif cfg.threshold_rule == "recall":
        score, threshold = metrics.dataset_mean_at_recall(by_dataset, cfg.min_recall)
    else:
        score, threshold = metrics.dataset_mean(by_dataset)
    counts = metrics.counts_at(pooled, threshold)
    rule = f"recall>={cfg.min_recall:g}" if cfg.threshold_rule == "recall" else cfg.threshold_rule
    return {"rule": rule, "threshold": threshold, "score": round(score, 4), "dice": round(counts.dice, 4),
            "precision": round(counts.precision, 4), "recall": round(counts.recall, 4), "ods": round(ods_f1, 4),
            "photos": len(pooled)}


def evaluate(cfg: DictConfig) -> dict:
    """Predict every photo of the split, stream the metrics, write the reports into
    ``cfg.output``; returns the pooled results. At the threshold used, the mask is scored as
    predict.py writes it: without the instances the joint rule takes for joints (unless
    ``keep_joints``); the threshold sweep (ODS, OIS, PR curve, the threshold chosen and its counts)
    scores the probabilities, before the rule (measuring every threshold's mask would cost 256
    measurements). Each photo is predicted at the scales of its size (``upscale_below_px``), at
    their threshold; a threshold is chosen for each scale set on the photos predicted at it."""
    check_inference_options(cfg)
    by_source = split_sources(cfg.data, cfg.data.split)
    pairs = [(name, *pair) for name, source_pairs in by_source.items() for pair in source_pairs]
    if not pairs:
        raise FileNotFoundError(f"no photos in split {cfg.data.split!r} of {_data_name(cfg.data)}")
    predictor, thresholds = predictor_from_config(cfg)
    output = Path(cfg.output)
    log.info("%d photo(s) of %s/%s on %s (%s), scales %s", len(pairs), _data_name(cfg.data), cfg.data.split,
             predictor.device, type(predictor.model).__name__, predictor.describe_scales())

    exact, tolerant, histograms, rows = metrics.Counts(), metrics.ToleranceCounts(), [], []
    source_counts = {name: metrics.Counts() for name in by_source}
    source_histograms: dict[str, list[np.ndarray]] = {name: [] for name in by_source}
    # per scale set (a photo's depends on its size), per dataset: each scale set's threshold is chosen on its photos
    scale_set_histograms: dict[str, dict[str, list[np.ndarray]]] = {}
    distractor_fp, distractor_mp = 0, 0.0
    rule = None if cfg.keep_joints or cfg.joint_rule is None else JointRule(**cfg.joint_rule)
    joint_px = joint_crack_px = 0
    source_joint_px = {name: 0 for name in by_source}
    for source, photo_path, mask_path in tqdm(pairs, desc="photos", unit="photo"):
        started = time.perf_counter()
        photo, truth = read_pair(photo_path, mask_path)
        truth = truth.astype(bool)
        key = scales_key(predictor.scales_for(*photo.shape[:2]))
        prob = predictor(photo)
        pred = prob >= thresholds(*photo.shape[:2])
        taken = None if rule is None else take_joints(pred, rule)
        counts = metrics.confusion(pred, truth)
        tol = metrics.tolerance_counts(pred, truth, cfg.tolerance)
        hist = metrics.level_histograms(prob, truth)
        best_f1, (best_threshold,) = metrics.ois([hist])
        exact, tolerant = exact + counts, tolerant + tol
        histograms.append(hist)
        source_counts[source] += counts
        source_histograms[source].append(hist)
        scale_set_histograms.setdefault(key, {}).setdefault(source, []).append(hist)
        row = {"photo": str(photo_path), "source": source, "width": photo.shape[1], "height": photo.shape[0],
               "scales": key,
               "crack_px": counts.tp + counts.fn, "pred_px": counts.tp + counts.fp, "dice": counts.dice,
               "iou": counts.iou, "precision": counts.precision, "recall": counts.recall, "f1_tol": tol.f1,
               "best_threshold": best_threshold, "best_f1": best_f1}
        if taken is not None:
            row["joint_px"] = int(np.count_nonzero(taken))
            joint_px += row["joint_px"]
            source_joint_px[source] += row["joint_px"]
            joint_crack_px += int(np.count_nonzero(taken & truth))
        distractors = distractor_mask(photo_path, truth.shape)
        if distractors is not None:
            row["distractor_fp_px"] = int(np.count_nonzero(pred & distractors & ~truth))
            distractor_fp += row["distractor_fp_px"]
            distractor_mp += truth.size / 1e6
        row["seconds"] = round(time.perf_counter() - started, 2)
        rows.append(row)
        del prob, pred, taken

    ods_f1, ods_threshold, _ = metrics.ods(histograms)
    ois_f1, _ = metrics.ois(histograms)
    precision_curve, recall_curve = metrics.precision_recall_curve(histograms)
    result = {
        "dice": exact.dice, "iou": exact.iou, "precision": exact.precision, "recall": exact.recall,
        f"f1_{cfg.tolerance:g}px": tolerant.f1, f"precision_{cfg.tolerance:g}px": tolerant.precision,
        f"recall_{cfg.tolerance:g}px": tolerant.recall, "ods": ods_f1, "ods_threshold": ods_threshold,
        "ois": ois_f1, "thresholds": thresholds.used, "photos": len(rows),
        # taken out of the mask at the threshold, and of them labelled crack (null: no joint rule)
        "joints": None if rule is None else {"px": joint_px, "crack_px": joint_crack_px},
        "leaderboard": {k: round(v, 4) for k, v in metrics.leaderboard(histograms).items()},
        "split": f"{_data_name(cfg.data)}:{cfg.data.split}", "scales": list(cfg.scales), "ckpt": str(cfg.ckpt),
    }
    if distractor_mp:
        result["distractor_fp_px_per_mp"] = distractor_fp / distractor_mp
    result["chosen"] = {key: _choose(by_dataset, cfg)
                        for key, by_dataset in scale_set_histograms.items()}
    source_curves = {}  # each dataset's PR curve, for threshold choices other than the pooled one
    if len(by_source) > 1:  # each dataset at the threshold used, and at its own best (ODS)
        result["sources"] = {}
        for name, counts in source_counts.items():
            if source_histograms[name]:
                precision, recall = metrics.precision_recall_curve(source_histograms[name])
                source_curves[name] = {"precision": precision.tolist(), "recall": recall.tolist()}
                f1, best, _ = metrics.ods(source_histograms[name])
                result["sources"][name] = {
                    "photos": len(source_histograms[name]), "dice": round(counts.dice, 4), "iou": round(counts.iou, 4),
                    "precision": round(counts.precision, 4), "recall": round(counts.recall, 4), "ods": round(f1, 4),
                    "ods_threshold": best, **({} if rule is None else {"joint_px": source_joint_px[name]})}
    result = {k: round(v, 4) if isinstance(v, float) and "threshold" not in k else v for k, v in result.items()}

    options = ("upscale_below_px", "overlap", "blend", "batch_size", "tolerance", "backend", "device", "compile",
               "keep_joints", "joint_rule")
    settings = {"tile": predictor.tile, "precision": predictor.precision, **{k: OmegaConf.to_container(cfg[k]) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in options}}
    report = {**result, "settings": settings,
              "pr_curve": {"threshold": metrics.THRESHOLDS.tolist(), "precision": precision_curve.tolist(),
                           "recall": recall_curve.tolist()},
              **({"source_pr_curves": source_curves} if source_curves else {}),
              "per_photo": rows}
    atomic_write_bytes(output / "report.json", json.dumps(report, indent=1).encode())
    write_csv(output / "per_photo.csv", PHOTO_FIELDS,
              ({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows))
    _plot_pr_curve(output / "pr_curve.png", precision_curve, recall_curve,
                   {"ODS": int(round(ods_threshold * metrics.LEVELS)),
                    **{f"{c['rule']} [{key}]": int(round(c["threshold"] * metrics.LEVELS))
                       for key, c in result["chosen"].items()}},
                   f"{Path(_data_name(cfg.data)).name} {cfg.data.split}")
    log.info("pooled ODS %.4f at %.4f", result["ods"], ods_threshold)
    for key, chosen in result["chosen"].items():
        log.info("scales [%s], %d photo(s): threshold rule %s chooses %.4f (their pooled Dice there %.4f)", key,
                 chosen["photos"], chosen["rule"], chosen["threshold"], chosen["dice"])
        if cfg.save_threshold and cfg.data.split == cfg.data.val_split:
            path = write_threshold(cfg.ckpt, chosen["threshold"], key_scales(key),
                                   {"rule": chosen["rule"], "dice": chosen["dice"], "ods": chosen["ods"],
                                    "split": result["split"], "photos": chosen["photos"],
                                    "precision": predictor.precision,
                                    # the photos each scale set's threshold was chosen on; None: all
                                    "upscale_below_px": cfg.upscale_below_px if predictor.splits_by_size else None},
                                   replace=cfg.save_threshold == "replace")
            if path:
                log.info("stored the threshold %.4f at scales [%s] for predict.py and later evaluations: %s",
                         chosen["threshold"], key, path)
    log.info("report: %s", output / "report.json")
    return result
