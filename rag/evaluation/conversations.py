"""`rag eval`: retrieval for the later turns of conversations (eval/conversations.jsonl).

Each line is a chat: `{"id", "turns": [{"question", "kind"?, "gold_quotes": [{"doc_id",
"quote"}]}]}`. The first turn opens it; each later turn is a "follow-up" (it leans on the
earlier turns) or a "topic-change" (it stands alone on another subject). For every later
turn, Recall@5 of its gold quotes (default mode, as the seed set scores it) is measured
twice: with the earlier user turns as history, and the turn alone. Follow-ups should gain;
topic changes should lose nothing (they must not be dragged back to the old topic).

Left out: scoring the answers' text, and conversations longer than three turns.
"""

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from rag.errors import RagError
from rag.evaluation.metrics import recall_at_k
from rag.evaluation.retrieval import GoldQuote, GoldRow, covered_quotes, jsonl_rows, locate, valid_row
from rag.search.retriever import Retriever
from rag.stores.base import ChunkStore

KINDS = ("follow-up", "topic-change")
K = 5


class TurnRow(BaseModel):
    question: str = Field(min_length=1)
    kind: str = "opening"
    gold_quotes: list[GoldRow]


class ChatRow(BaseModel):
    """A line of the conversation set, as written (the same checks as a question's)."""
    model_config = ConfigDict(extra="ignore")
    id: StrictStr | StrictInt
    turns: list[TurnRow] = Field(min_length=1)


@dataclass(frozen=True)
class Chat:
    id: str
    turns: list[tuple[str, str, list[GoldQuote]]]  # question, kind, gold quotes


def load_conversations(path: Path, store: ChunkStore) -> list[Chat]:
    chats = []
    for number, row in jsonl_rows(path, "conversations"):
        valid = valid_row(ChatRow, row, f"{path}:{number}: not a valid conversation")
        turns = [(t.question, t.kind, [locate(g.doc_id, g.quote, store) for g in t.gold_quotes]) for t in valid.turns]
        chats.append(Chat(str(valid.id), turns))
        if any(kind not in ("opening", *KINDS) for _, kind, _ in turns):
            raise RagError(f"{path}:{number}: a turn's kind must be opening, follow-up or topic-change")
    return chats


def follow_up_recall(retriever: Retriever, chats: list[Chat]) -> dict[str, Any]:
    """Recall@5 of the later turns, by kind, with the conversation and alone."""
    rows: dict[str, dict[str, list[float]]] = {kind: {"with_history": [], "alone": []} for kind in KINDS}
    for chat in chats:
        history: list[str] = []
        for question, kind, gold in chat.turns:
            if kind in KINDS:
                for label, earlier in (("with_history", history), ("alone", [])):
                    hits = retriever.search(question, K, history=earlier)
                    covered = [covered_quotes(retriever.store, h.row, gold) for h in hits]
                    rows[kind][label].append(recall_at_k(covered, len(gold), K))
            history = [*history, question]
    return {kind: {"turns": len(r["alone"]), **{label: round(statistics.fmean(v), 4) if v else None
                                                  for label, v in r.items()}}
            for kind, r in rows.items()}
