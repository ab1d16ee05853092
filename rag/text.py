"""Text checks shared by the library and the service.

Left out: normalisation (NFC and the like); text is kept as the user gave it.
"""


def is_unicode_text(text: str) -> bool:
    """False for a str holding a lone surrogate, which JSON escapes allow (`"\\ud800"`) and
    no tokenizer, UTF-8 encoder or response can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
