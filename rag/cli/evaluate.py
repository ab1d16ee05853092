"""`rag eval`: retrieval per mode on the seed questions or a BEIR dataset, the answer
metric, conversations and abstention, written as reports, with regression gates.

Left out: comparing two reports (diff the JSON files).
"""

from pathlib import Path
from typing import Annotated

import typer

from rag.cli.base import IndexOpt, fail, load_settings, user_errors

BEIR_UNREPORTED = ("recall@5",)  # rag.evaluation.beir reports nDCG@10, Recall@10/100 and MRR@10


@user_errors
def eval_command(
    questions: Annotated[Path, typer.Option(help="question set (JSONL)")] = Path("eval/questions.jsonl"),
    beir: Annotated[Path | None, typer.Option(help="evaluate on a BEIR dataset folder instead")] = None,
    mode: Annotated[list[str] | None, typer.Option(help="modes to compare (repeatable); default all")] = None,
    fusion: Annotated[list[str] | None, typer.Option(help="also compare hybrid with this fusion, e.g. rrf60, "
                                                      "convex0.5 (repeatable)")] = None,
    sweep: Annotated[bool, typer.Option(help="also compare a grid of RRF and convex fusions")] = False,
    out_dir: Annotated[Path, typer.Option(help="where reports go")] = Path("eval/reports"),
    gate_mode: Annotated[str, typer.Option(help="the mode the --min-* gates apply to")] = "hybrid",
    min_recall_at_5: Annotated[float | None, typer.Option(help="fail below this Recall@5")] = None,
    min_recall_at_10: Annotated[float | None, typer.Option(help="fail below this Recall@10")] = None,
    min_mrr_at_10: Annotated[float | None, typer.Option(help="fail below this MRR@10")] = None,
    min_ndcg_at_10: Annotated[float | None, typer.Option(help="fail below this nDCG@10")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="BEIR: only the first N queries (quick runs)")] = None,
    calibrate: Annotated[bool, typer.Option(help="print the abstention settings fitted on this set")] = False,
    fit_answer: Annotated[bool, typer.Option("--fit-answer", help="print the answer-sentence weights fitted on "
                                             "this set, and how they score on the half they were not fitted on")
                          ] = False,
    conversations: Annotated[Path, typer.Option(help="multi-turn chats whose later turns are scored with and "
                                               "without the conversation (skipped if missing)")] = Path(
        "eval/conversations.jsonl"),
    min_answer: Annotated[float | None, typer.Option(help="fail below this share of answerable questions whose "
                                                     "extractive answer holds a gold quote")] = None,
    whole_docs: Annotated[bool, typer.Option(help="BEIR: the published setting, one truncated vector per "
                                             "document, instead of chunks")] = False,
    index: IndexOpt = None,
) -> None:
    """Measure retrieval (Recall@k, MRR@10, nDCG@10, latency) per mode; gate on thresholds."""
    from rag.evaluation.report import CHART_EXTRA, chart_available, terminal_details, terminal_summary, write_reports
    from rag.evaluation.retrieval import SWEEP, variants
    from rag.types import MODES

    if unknown := [m for m in mode or () if m not in MODES]:
        fail(f"unknown mode(s): {', '.join(unknown)}; choose from {', '.join(MODES)}")
    modes = tuple(m for m in MODES if not mode or m in mode)
    settings = load_settings(index=index)
    try:
        columns = variants(modes, tuple(dict.fromkeys([*(fusion or ()), *(SWEEP if sweep else ())])),
                           settings.fusion_depth)
    except ValueError as exc:
        fail(str(exc))
    gates = {"recall@5": min_recall_at_5, "recall@10": min_recall_at_10, "mrr@10": min_mrr_at_10,
             "ndcg@10": min_ndcg_at_10}
    gated = any(threshold is not None for threshold in gates.values())
    if gated and not whole_docs and gate_mode not in [c.label for c in columns]:
        fail(f"--gate-mode {gate_mode} is not among the evaluated modes")
    if limit is not None and beir is None:
        fail("--limit applies to --beir only (the question set is evaluated whole)")
    if beir is not None and (unreported := [m for m in BEIR_UNREPORTED if gates[m] is not None]):
        fail(f"{', '.join(unreported)} is not reported for BEIR (nDCG@10, Recall@10, Recall@100, MRR@10 are): "
             "a gate on it would never run")
    if beir is not None:
        from rag.evaluation.beir import evaluate_beir, evaluate_whole_docs

        if whole_docs:
            report = evaluate_whole_docs(beir, settings, limit=limit, log=lambda m: typer.echo(m, err=True))
            name, title, gate_mode = f"beir-{beir.name}-whole", f"BEIR {beir.name}, whole documents", "dense-whole"
        else:
            report = evaluate_beir(beir, settings, columns, limit=limit, log=lambda m: typer.echo(m, err=True))
            name, title = f"beir-{beir.name}", f"BEIR {beir.name}"
    else:
        from rag.evaluation.calibrate import calibrate as fit_abstention
        from rag.evaluation.retrieval import answer_hits, evaluate, highlight_hits, load_questions
        from rag.service import open_retriever

        retriever = open_retriever(settings)
        question_set = load_questions(questions, retriever.store)
        report = evaluate(retriever, question_set, columns)
        report["abstention"] = fit_abstention(retriever, question_set)
        report["highlights"] = highlight_hits(retriever, question_set)
        report["answer"] = answer_hits(retriever, question_set)
        if fit_answer:
            from rag.evaluation.fit_answer import fit_answer as fit_answer_weights

            report["answer"]["fit"] = fit_answer_weights(retriever, question_set)
        if conversations.is_file():
            from rag.evaluation.conversations import follow_up_recall, load_conversations

            report["conversations"] = follow_up_recall(retriever, load_conversations(conversations, retriever.store))
        name, title = "seed", f"Seed questions ({questions.name})"
    typer.echo(terminal_summary(report))
    for line in terminal_details(report, calibrate=calibrate, fit_answer=fit_answer):
        typer.echo(line)
    paths = write_reports(report, out_dir, name, title)
    typer.echo("reports: " + ", ".join(str(p) for p in paths))
    if not chart_available():
        typer.echo(f"no chart: {CHART_EXTRA}", err=True)

    if min_answer is not None and (answer := report.get("answer")) and answer["contains_gold"] < min_answer:
        fail(f"answer gate failed: {answer['contains_gold']:.3f} of answers hold a gold quote < {min_answer}")
    if not gated:
        return
    overall = report["modes"][gate_mode]["overall"]
    below = [f"{metric} {overall[metric]:.3f} < {threshold}" for metric, threshold in gates.items()
             if threshold is not None and metric in overall and overall[metric] < threshold]
    if below:
        fail(f"regression gate failed for mode {gate_mode}: " + "; ".join(below))
