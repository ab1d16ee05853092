"""Questions in, cited passages out: the retriever (`retriever`: validation, ranking,
fusion of the dense and lexical sides in `fusion`), the passages a response returns with
their highlights and citations (`passages`), the extractive answer (`answer`), follow-up
questions (`conversation`) and the context packed for a chat model (`context`)."""
