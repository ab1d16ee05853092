"""Write an evaluation report: a terminal table, JSON, Markdown and a PNG chart of modes.

The report is the dict that `rag.evaluation.retrieval.evaluate` or `rag.evaluation.beir.evaluate_beir` returns:
{"modes": {mode: {"overall": {metric: value}, ...}}, ...}.

Left out: HTML reports and comparisons against earlier runs (diff two JSON files for that).
"""

import importlib.util
import json
from pathlib import Path
from typing import Any


def mode_table(report: dict[str, Any], key: str = "overall") -> list[list[str]]:
    modes = report["modes"]
    metrics = list(next(iter(modes.values()))[key])
    rows = [["mode", *metrics, "p50 ms", "p95 ms"]]
    for mode, result in modes.items():
        latency = result.get("latency_ms", {})
        rows.append([mode, *(f"{result[key][m]:.3f}" for m in metrics),
                     f"{latency.get('p50', float('nan')):.1f}", f"{latency.get('p95', float('nan')):.1f}"])
    return rows


def breakdown_table(report: dict[str, Any], key: str, metric: str) -> list[list[str]]:
    """Rows: a document or question type; columns: modes; cells: `metric`."""
    modes = report["modes"]
    groups = list(next(iter(modes.values()))[key])
    rows = [[key.removeprefix("by_"), "n", *modes]]
    for group in groups:
        first = next(iter(modes.values()))[key][group]
        rows.append([group, str(first["n"]), *(f"{modes[m][key][group][metric]:.3f}" for m in modes)])
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def markdown_table(rows: list[list[str]]) -> str:
    head, *body = rows
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(r) + " |" for r in body)])


def terminal_summary(report: dict[str, Any]) -> str:
    parts = [text_table(mode_table(report))]
    if "by_doc" in next(iter(report["modes"].values())):
        parts += ["", "Recall@5 per document", text_table(breakdown_table(report, "by_doc", "recall@5")),
                  "", "Recall@5 per question type", text_table(breakdown_table(report, "by_type", "recall@5"))]
    return "\n".join(parts)


def terminal_details(report: dict[str, Any], calibrate: bool = False, fit_answer: bool = False) -> list[str]:
    """What `rag eval` prints after the tables: highlights, the answer metric, the
    conversations, abstention (the fitted settings with `calibrate`, the answer weights with
    `fit_answer`), and every missed question with what came back."""
    out: list[str] = []
    if highlights := report.get("highlights"):
        out.append(f"\nhighlights: first highlight on the gold quote in {highlights['first_highlight_on_gold']:.0%} "
                   f"of {highlights['relevant_passages']} relevant top-5 passages")
    if answer := report.get("answer"):
        out.append(f"answer: the extractive answer holds a gold quote for {answer['contains_gold']:.0%} of "
                   f"{answer['questions']} answerable questions (its first sentence: "
                   f"{answer['first_sentence_gold']:.0%})")
        out += [f"  [answer] missed {miss['id']}: {miss['question']}  -> {miss['answer'][:120]}"
                for miss in answer["misses"]]
    if chats := report.get("conversations"):
        out.append("\nlater turns of conversations, Recall@5   with the conversation   the turn alone")
        out += [f"  {kind:<13} ({row['turns']:>3} turns)         {row['with_history']:>5.3f}"
                f"                   {row['alone']:>5.3f}" for kind, row in chats.items()]
    if abstention := report.get("abstention"):
        back = abstention["held_back"]["configured"]
        out.append(f"\nabstention (held-back third, configured settings): {_share(back, 'unanswerable')} "
                   f"unanswerable flagged ({_share(back, 'near_topic')} near-topic, {_share(back, 'off_topic')} "
                   f"off-topic), {_share(back, 'answerable')} answerable flagged")
        if calibrate:
            fitted = abstention["fitted"]
            out.append(f"fitted on the calibration split: RAG_ABSTAIN_SLOPE={fitted['slope']} "
                       f"RAG_ABSTAIN_OFFSET={fitted['offset']} RAG_ABSTAIN_MISSING_WEIGHT={fitted['missing_weight']} "
                       f"RAG_ABSTAIN_ANSWER_WEIGHT={fitted['answer_weight']} "
                       f"RAG_ABSTAIN_ANSWER_CENTER={fitted['answer_center']}")
    if fit_answer and (fit := report.get("answer", {}).get("fit")):
        out.append("answer weights fitted on this set: " + ", ".join(f"{k} {v}" for k, v in fit["fitted"].items()))
        out.append("answer metric on the half not fitted on: " + "; ".join(f"{k} {v:.3f}"
                                                                          for k, v in fit["folds"].items()))
    for mode_name, result in report["modes"].items():
        for failure in result.get("failures", []):
            got = ", ".join(f"{r['doc_id']}›{r['section'] or '-'}" for r in failure["returned"])
            out.append(f"  [{mode_name}] missed {failure['id']}: {failure['question']}  -> got {got}")
    return out


def markdown(report: dict[str, Any], title: str) -> str:
    out = [f"# {title}", "", f"Build `{report.get('build_id', '-')}`; "
           f"{report.get('answerable', report.get('queries', '?'))} scored questions.", "",
           markdown_table(mode_table(report)), ""]
    first = next(iter(report["modes"].values()))
    if "by_doc" in first:
        for key in ("by_doc", "by_type"):
            table = markdown_table(breakdown_table(report, key, "recall@5"))
            out += [f"## Recall@5 {key.replace('_', ' ')}", "", table, ""]
    if abstention := report.get("abstention"):
        fitted = abstention["fitted"]
        out += ["## Abstention", "", f"Features: {'; '.join(abstention['features'])}. Fitted: slope "
                f"{fitted['slope']}, missing weight {fitted['missing_weight']}, answer weight "
                f"{fitted['answer_weight']} (centre {fitted['answer_center']}), offset {fitted['offset']}.", "",
                "| split | settings | near-topic flagged | off-topic flagged | answerable flagged |",
                "|---|---|---|---|---|"]
        for split, which, stats in (("calibration", "fitted", abstention["calibration_split"]),
                                    ("held back", "fitted", abstention["held_back"]["fitted"]),
                                    ("held back", "configured", abstention["held_back"]["configured"])):
            out.append(f"| {split} | {which} | {_share(stats, 'near_topic')} | {_share(stats, 'off_topic')} "
                       f"| {_share(stats, 'answerable')} |")
        out.append("")
    if answer := report.get("answer"):
        out += ["## Answers", "", f"The extractive answer holds a gold quote for {answer['contains_gold']:.0%} of "
                f"{answer['questions']} answerable questions; its first sentence for "
                f"{answer['first_sentence_gold']:.0%}.", ""]
    if chats := report.get("conversations"):
        out += ["## Conversations: later turns, Recall@5", "", "| turn | n | with the conversation | alone |",
                "|---|---|---|---|"]
        out += [f"| {kind} | {row['turns']} | {row['with_history']:.3f} | {row['alone']:.3f} |"
                for kind, row in chats.items()]
        out.append("")
    for mode, result in report["modes"].items():
        failures = result.get("failures", [])
        if not failures:
            continue
        out += [f"## Failures in mode `{mode}` ({len(failures)})", ""]
        for f in failures:
            out.append(f"- **{f['id']}** {f['question']} — gold: “{f['gold'][0]}”")
            for r in f["returned"]:
                mark = "relevant" if r["relevant"] else "not relevant"
                out.append(f"  - got `{r['doc_id']}` › {r['section'] or '(no section)'} ({mark}): {r['text'][:100]}…")
        out.append("")
    return "\n".join(out)


def chart(report: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    modes = report["modes"]
    metrics = list(next(iter(modes.values()))["overall"])
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(1.4 * len(metrics) + 2, 4))
    for i, (mode, result) in enumerate(modes.items()):
        xs = [j + i * width for j in range(len(metrics))]
        bars = ax.bar(xs, [result["overall"][m] for m in metrics], width, label=mode)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


CHART_EXTRA = "the chart needs matplotlib, the `report` extra: pip install -e '.[report]' (make install has it)"


def write_reports(report: dict[str, Any], out_dir: Path, name: str, title: str) -> list[Path]:
    """The JSON and Markdown reports, and the chart when matplotlib (the `report` extra) is
    installed; `chart_available()` says whether it is."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    paths[0].write_text(json.dumps(report, indent=2, ensure_ascii=False))
    paths[1].write_text(markdown(report, title))
    if chart_available():
        paths.append(out_dir / f"{name}.png")
        chart(report, paths[2], title)
    return paths


def chart_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _share(stats: dict[str, Any], group: str) -> str:
    """"60% of 5", or "- of 0" for a group the split has none of."""
    n = stats[group]
    return f"{stats[f'{group}_flagged']:.0%} of {n}" if n else "- of 0"
