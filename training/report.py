"""report.json (the schema of issue 3), report.md with the tables, and PNG plots."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from training.config import METHODS, TUNING_ROWS, TrainConfig

# Report order: the methods, the tuned encoders alone (FT, HT, LoRA, LPFT) before LEVI.
# ``levi_frozen``: LEVI on the pre-trained backbone beside LEVI on a tuned one.
REPORT_ROWS: tuple[str, ...] = (
    *METHODS[:-1],
    *TUNING_ROWS.values(),
    "levi_frozen",
    METHODS[-1],
)

PLOTS = ("plots/ood_rmse_by_group.png", "plots/per_layer_rmse.png")


def build_report(
    *,
    dataset: str,
    split: Mapping,
    backbone: Mapping,
    seeds: list[int],
    methods: Mapping[str, dict],
    exported: Mapping[str, float] | None,
    online_corrections: Mapping[str, Any] | None = None,
) -> dict:
    """The report.json document; ``methods`` in report order (``REPORT_ROWS``).

    ``online_corrections``: ``training.progressive.fit_and_evaluate``'s section (a separate
    evaluation; the paper-protocol tables do not include corrections).
    """
    return {
        "dataset": dataset,
        "split": dict(split),
        "backbone": dict(backbone),
        "seeds": list(seeds),
        "methods": {m: methods[m] for m in REPORT_ROWS if m in methods},
        "exported": dict(exported) if exported is not None else None,
        "online_corrections": dict(online_corrections) if online_corrections else None,
    }


def _pm(stat: Mapping[str, float]) -> str:
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def render_markdown(report: Mapping, notes: Mapping) -> str:
    """report.md: overall table, per-group OOD table, per-layer table, detection, notes.

    Args:
        notes: ``lrs`` (method -> chosen lr), ``auroc`` (``{"mean","std"}`` or None),
            ``timings`` (stage -> seconds), ``text`` (list of lines on how it was trained).
    """
    methods = report["methods"]
    lines = [
        f"# LEVI report — {report['dataset']}",
        "",
        f"Backbone: `{report['backbone'].get('name')}` "
        f"(fingerprint `{str(report['backbone'].get('fingerprint', ''))[:16]}`), "
        f"split: {report['split'].get('name', '')}, seeds: {report['seeds']}.",
        "",
        "## RMSE (mean ± std over seeds)",
        "",
        "| method | ID test RMSE | OOD RMSE | learning rate |",
        "|---|---|---|---|",
    ]
    lrs = notes.get("lrs", {})
    for name, m in methods.items():
        lr = lrs.get(name)
        lines.append(
            f"| {name} | {_pm(m['id_rmse'])} | {_pm(m['ood_rmse'])} | "
            f"{'' if lr is None else f'{lr:g}'} |"
        )
    groups = sorted({g for m in methods.values() for g in m["ood_rmse_by_group"]})
    if groups:
        lines += ["", "## OOD RMSE per OOD group (mean over seeds)", ""]
        lines.append("| OOD group | " + " | ".join(methods) + " |")
        lines.append("|---" * (len(methods) + 1) + "|")
        for g in groups:
            row = [
                f"{m['ood_rmse_by_group'][g]['mean']:.4f}" if g in m["ood_rmse_by_group"] else ""
                for m in methods.values()
            ]
            lines.append(f"| {g} | " + " | ".join(row) + " |")
    if "levi" in methods and methods["levi"].get("per_layer"):
        lines += ["", "## LEVI: RMSE of each single adapter (paper Fig. 4)", ""]
        lines += ["| layer | ID test RMSE | OOD RMSE |", "|---|---|---|"]
        for entry in methods["levi"]["per_layer"]:
            lines.append(
                f"| {entry['layer']} | {_pm(entry['id_rmse'])} | {_pm(entry['ood_rmse'])} |"
            )
    if notes.get("auroc"):
        lines += [
            "",
            "## OOD signal",
            "",
            "AUROC of LEVI's adapter disagreement (std over adapters) separating OOD pairs from "
            f"ID test pairs: {_pm(notes['auroc'])}.",
        ]
    exported = report.get("exported")
    if exported:
        lines += [
            "",
            "## Exported model",
            "",
            f"ID test RMSE {exported['id_test_rmse']:.4f}, OOD RMSE {exported['ood_rmse']:.4f}"
            + (f" ({notes['exported_source']})" if notes.get("exported_source") else "")
            + ".",
        ]
    lines += corrections_markdown(report.get("online_corrections"))
    if notes.get("text"):
        lines += ["", "## How it was trained", ""] + [f"- {t}" for t in notes["text"]]
    if notes.get("timings"):
        lines += ["", "## Stage timings", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in notes["timings"].items()]
    lines += ["", "![OOD RMSE per OOD group](plots/ood_rmse_by_group.png)"]
    lines += ["", "![Per-layer adapter RMSE](plots/per_layer_rmse.png)", ""]
    return "\n".join(lines)


def corrections_markdown(section: Mapping | None) -> list[str]:
    """The "Online corrections" section (progressive validation of ``POST /feedback``)."""
    if not section:
        return []
    fit = section["fitted_on"]
    lines = [
        "",
        "## Online corrections (progressive validation)",
        "",
        "What `POST /feedback` adds after deployment: shrunk per-item, then per-user offsets "
        "of the residuals received since the model was installed. Each rating below is "
        "predicted with the corrections of the ratings before it (time order), then sent as "
        f"feedback. Shrinkage fitted on {fit['part']} ({fit['n']:,} ratings, "
        f"{fit['model']:.4f} -> {fit['corrected']:.4f}): k_item {section['k_item']:g}, "
        f"k_user {section['k_user']:g}"
        + (
            f"; for items out of the model's vocabulary (cold start) k_item_oov "
            f"{section['k_item_oov']:g}, fitted on the same ratings predicted with the item ids "
            "hidden"
            if "k_item_oov" in section
            else ""
        )
        + ". The tables above are the model alone.",
        "",
        "| set | ratings | model alone | with corrections |",
        "|---|---|---|---|",
    ]
    names = {"test": "ID test", "ood": "OOD"}
    for part, name in names.items():
        if part in section:
            r = section[part]
            lines.append(f"| {name} | {r['n']:,} | {r['model']:.4f} | {r['corrected']:.4f} |")
    for group, r in (section.get("ood_groups") or {}).items():
        lines.append(f"| OOD {group} | {r['n']:,} | {r['model']:.4f} | {r['corrected']:.4f} |")
    return lines


def plot_report(report: Mapping, out_dir: Path) -> list[Path]:
    """Per-group OOD RMSE by method (grouped bars) and LEVI's per-layer adapter RMSE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    methods = report["methods"]
    groups = sorted({g for m in methods.values() for g in m["ood_rmse_by_group"]})
    fig, ax = plt.subplots(figsize=(max(8, len(groups) * 0.9), 4.5))
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(groups))
    for k, (name, m) in enumerate(methods.items()):
        vals = [m["ood_rmse_by_group"].get(g, {"mean": np.nan})["mean"] for g in groups]
        ax.bar(x + k * width - 0.4 + width / 2, vals, width, label=name)
    ax.set_xticks(x, groups, rotation=45, ha="right")
    ax.set_ylabel("OOD RMSE")
    ax.set_title("OOD RMSE per OOD group")
    lows = [m["ood_rmse"]["mean"] for m in methods.values()]
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 0.3), None)
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    paths = [out_dir / PLOTS[0]]
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    per_layer = methods.get("levi", {}).get("per_layer") or []
    if per_layer:
        layers = [e["layer"] for e in per_layer]
        for key, label in (("id_rmse", "ID test"), ("ood_rmse", "OOD")):
            ax.errorbar(
                layers,
                [e[key]["mean"] for e in per_layer],
                yerr=[e[key]["std"] for e in per_layer],
                marker="o",
                capsize=3,
                label=f"single adapter, {label}",
            )
            ax.axhline(methods["levi"][key]["mean"], ls="--", lw=1, color="gray")
        ax.set_xlabel("encoder layer (0-based)")
        ax.legend()
    ax.set_ylabel("RMSE")
    ax.set_title("LEVI: RMSE of each adapter (dashed: ensemble)")
    fig.tight_layout()
    paths.append(out_dir / PLOTS[1])
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def _finite(value):
    """NaN (e.g. the OOD RMSE of a split without an OOD set) as null: JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_report(report: Mapping, notes: Mapping, out_dir: Path) -> Path:
    """Write report.json, report.md and the plots into ``out_dir``; return the directory."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(_finite(report), indent=2) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report, notes))
    plot_report(report, out_dir)
    return out_dir


# -- prose: how the models were trained (report.md's notes) -----------------------------


def collab_note(cfg: TrainConfig) -> str:
    """How the report describes the from-scratch model's collaborative term."""
    head = cfg.head_fields()
    parts = ["user and item biases"] if head["id_biases"] else []
    if head["factor_dim"]:
        parts.append(f"a {head['factor_dim']}-wide user-item factor dot product")
    if not parts:
        return "No collaborative term (factor_dim 0, id_biases off)."
    return (
        "The from-scratch model (LEVI, MLP, multi-head MLP) includes a collaborative term, "
        f"{' plus '.join(parts)}, added to every adapter's output; its rows get per-example "
        f"L2 {cfg.factor_l2:g}, as in matrix factorisation."
    )


def tuning_note(summary: Mapping[str, Any]) -> str:
    """How the report describes the backbone tuning stage (``training.tuning``)."""
    c = summary["config"]
    what = {
        "half": f"the top half of the transformer layers (layers {summary['first_tuned_layer']}"
        f"-{summary['n_layers'] - 1})",
        "lora": f"LoRA adapters of rank {c['lora_rank']} (alpha {c['lora_alpha']:g}) on every "
        f"attention and feed-forward projection of layers {summary['first_tuned_layer']}-"
        f"{summary['n_layers'] - 1}, merged into the weights",
        "full": "every parameter (embeddings included)",
        "lpft": "every parameter, after the head alone on the frozen encoder",
    }[summary["kind"]]
    reused = f" Reused from {summary['reused']}." if summary.get("reused") else ""
    return (
        f"Backbone tuned before LEVI ({summary['kind']}, report row `{summary['row']}`: the "
        f"tuned encoder with its regression head alone, one tuning run, seed {c['seed']}): "
        f"{what}, with a regression head (pooled last layer of each view, hidden "
        f"{c['head_hidden']}) on ID train; each step {c['text_fraction']:g} of every view's "
        f"training texts ({summary['texts_per_step']} texts) and the ID train pairs among "
        f"them (up to {summary['pairs_per_step']:,}); Adam, encoder lr "
        f"{c['lora_lr'] if summary['kind'] == 'lora' else c['lr']:g}, head lr "
        f"{c['head_lr']:g}; validated every {c['eval_every']} steps, patience "
        f"{c['patience']}: best ID validation RMSE {summary['val_rmse']:.4f} at step "
        f"{summary['best_step']} of {summary['steps']} ({summary['train_seconds']:.0f}s "
        f"training on {summary['devices']} device(s), {summary['seconds']:.0f}s with the "
        f"frozen bottom's precompute). Tuned fingerprint {summary['fingerprint'][:16]}, "
        f"pre-trained {summary['base_fingerprint'][:16]}."
        + (f" {summary['note'][0].upper()}{summary['note'][1:]}." if summary.get("note") else "")
        + reused
    )


def training_notes(
    cfg: TrainConfig,
    lrs: dict[str, float],
    split_seed: int,
    tuning: Mapping[str, Any] | None = None,
) -> list[str]:
    return ([tuning_note(tuning)] if tuning else []) + [
        f"Adam with decoupled weight decay (optax.adamw, {cfg.weight_decay:g}), batch "
        f"{cfg.batch_size}, dropout {cfg.head_fields()['dropout']:g}; early stopping on ID "
        "validation RMSE "
        f"(patience {cfg.patience}, at most {cfg.max_epochs} epochs), best parameters kept.",
        collab_note(cfg),
        f"Item OOV training: each training pair's item features are replaced by the OOV id "
        f"with probability {cfg.item_oov_prob:g}, so the OOV slot is trained and cold-start "
        "(OOD) items are carried by their item text.",
        "Learning rate from "
        + ", ".join(f"{lr:g}" for lr in cfg.lrs)
        + (
            f" chosen on ID validation with seed {cfg.seeds[0]} only and reused for the other "
            f"seeds, by successive halving: every rate trained {cfg.lr_probe_epochs} epoch(s), "
            "the better half twice as long, until one is left and continues to early stopping."
            if cfg.lr_on_first_seed and cfg.lr_probe_epochs
            else " chosen on ID validation."
        ),
        f"One ID split (split seed {split_seed}); seeds vary initialisation, dropout and "
        "batch order. Baselines are deterministic (std 0).",
        "Activations cached as float16 and cast to float32 in the head.",
        "Chosen learning rates: " + ", ".join(f"{m} {lr:g}" for m, lr in lrs.items()) + ".",
    ]
