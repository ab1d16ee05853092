"""Cleaning: one test per rule on hand-made text, then the bundled articles."""

import json

import pytest

from rag.ingest.clean import CleanRules, clean
from tests.helpers import CORPUS

LONG = ("This paragraph is long enough to be body text, with more than twenty-five words in it, "
        "so the head of the page ends right here and the rest is article.")


def removed_by(doc, rule):  # type: ignore[no-untyped-def]
    return [r.text for r in doc.removed if r.rule == rule]


def test_boilerplate_lines_go_but_their_words_inside_sentences_stay():
    doc = clean(f"{LONG}\n\nMore From Our Experts\n\nShare\n\nWe share more from our experts daily.")
    assert removed_by(doc, "boilerplate") == ["More From Our Experts", "Share"]
    assert doc.text.endswith("We share more from our experts daily.")


def test_promo_phrase_removes_a_short_line_only():
    long_line = "A" * 300 + " subscribe now."
    doc = clean(f"{LONG}\n\nThis article appears in print. Subscribe now to support us.\n\n{long_line}")
    assert removed_by(doc, "promo") == ["This article appears in print. Subscribe now to support us."]
    assert long_line in doc.text


def test_tail_marker_cuts_the_rest_of_the_page_but_only_late_in_it():
    early = clean(f"Related Articles\n\n{LONG}\n\n{LONG} Again.")
    assert early.removed == [] and "Related Articles" in early.text
    late = clean(f"{LONG}\n\n{LONG} Again.\n\nRelated Publications\n\nSome teaser\n\nA teaser blurb.")
    assert removed_by(late, "tail_teasers") == ["Related Publications", "Some teaser", "A teaser blurb."]


def test_title_lines_are_dropped_wherever_they_repeat():
    doc = clean(f"My Title\n\n{LONG}\n\nMY TITLE", title="My Title")
    assert removed_by(doc, "title") == ["My Title", "MY TITLE"]


def test_image_credit_lines_go():
    doc = clean(f"{LONG}\n\nAlex Nabaum illustration for Foreign Policy\n\nSputnik/Alexander Kazakov/Pool/Reuters")
    assert removed_by(doc, "credit") == ["Alex Nabaum illustration for Foreign Policy",
                                         "Sputnik/Alexander Kazakov/Pool/Reuters"]


def test_kicker_and_byline_go_only_in_the_head():
    doc = clean(f"Analysis\n\nBy Jane Roe, a fellow\n\n{LONG}\n\nAnalysis\n\nBy 2030, trade may double.")
    assert removed_by(doc, "kicker") == ["Analysis"]
    assert removed_by(doc, "byline") == ["By Jane Roe, a fellow"]
    assert doc.text.endswith("Analysis\n\nBy 2030, trade may double.")


def test_caption_printed_twice_goes_entirely():
    caption = "Two leaders meet in Beijing, September 2025."
    doc = clean(f"{caption}\n{caption} Photo Agency\n\n{LONG}")
    assert removed_by(doc, "caption_twice") == [caption, f"{caption} Photo Agency"]
    assert doc.text == LONG


def test_a_run_of_short_lines_is_a_menu():
    doc = clean(f"{LONG}\n\nChina\n\nRussia\n\nUkraine\n\n{LONG} End.")
    assert removed_by(doc, "nav_list") == ["China", "Russia", "Ukraine"]
    two = clean(f"{LONG}\n\nChina\n\nRussia\n\n{LONG} End.")
    assert removed_by(two, "nav_list") == []


def test_repeated_paragraph_is_kept_once():
    doc = clean(f"{LONG}\n\n{LONG}\n\nSomething else entirely, also a sentence.")
    assert removed_by(doc, "repeated_paragraph") == [LONG]
    assert doc.text.count(LONG) == 1


def test_each_rule_can_be_switched_off():
    text = f"{LONG}\n\n{LONG}"
    assert clean(text, rules=CleanRules(drop_repeated_paragraphs=False)).text.count(LONG) == 2


def test_headings_name_the_sections_that_follow():
    doc = clean(f"Intro line that is a sentence.\n\nAre they allies?\n\n{LONG}\n\nThe Arctic\n\n{LONG} Two.")
    titles = [s.title for s in doc.sections]
    assert titles == [None, "Are they allies?", "The Arctic"]
    bodies = [doc.text[s.char_start:s.char_end] for s in doc.sections]
    assert bodies == ["Intro line that is a sentence.", LONG, f"{LONG} Two."]


def test_markdown_headings_and_a_heading_over_a_bullet_list():
    doc = clean(f"## Background\n\n{LONG}\n\nA dek sentence.\nSummary\n• First point of the summary here.")
    assert [s.title for s in doc.sections] == ["Background", "Summary"]
    assert doc.text.startswith("Background\n\n")


def test_blank_lines_where_a_heading_was_lost_start_an_untitled_section():
    doc = clean(f"North Korea\n\n{LONG}\n\n\n{LONG} Venezuela.")
    assert [s.title for s in doc.sections] == ["North Korea", None]


def test_example_in_module_docstring():
    doc = clean(f"Analysis\n\nMy Title\n\nBy Jane Roe\n\nIntro\n\n{LONG}", title="My Title")
    assert doc.text == f"Intro\n\n{LONG}"
    assert [(s.title, doc.text[s.char_start:s.char_end]) for s in doc.sections] == [("Intro", LONG)]


# ------------------------------------------------------------ the bundled articles

ARTICLES = sorted(p.stem for p in CORPUS.glob("*.txt"))
PROMOS = ["More From Our Experts", "Join the Conversation", "Related Publications", "Subscribe now",
          "More on:", "Listen to this article", "Recommended Resources", "Top Stories",
          "More from Foreign Policy", "illustration for Foreign Policy", "Creative Commons",
          "View All Publications", "Already a subscriber", "Type: Analysis and Commentary"]
# A sample of body sentences from each article, from its start, middle and end.
BODY = {
    "cfr-china-russia-backgrounder": [
        "China and Russia have a long, complicated history together",
        "The two formally resolved their border dispute in the 2000s",
        "reaching an all-time high of $245 billion in 2024",
        "Neither has vetoed a Security Council resolution without the other’s support since 2004.",
        "which heavily rely on drone parts sourced via Chinese supply chains.",
    ],
    "fp-china-russia-axis": [
        "The bond has been decades in the making",
        "before beginning a 2,300-nautical-mile joint patrol",
        "Russia became the dominant supplier of advanced weapons to China.",
        "The SCO, in contrast, is a Eurasian grouping of Russia, China, and their friends.",
        "but mutual distrust and skepticism of the other remain in both countries.",
    ],
    "usip-china-russia-global-cooperation": [
        "Chinese President Xi Jinping and Russian President Vladimir Putin are in the middle",
        "the “freeze for freeze” or “double suspension” proposal",
        "Serbia sits on Europe’s periphery.",
        "Chinese involvement in Africa is primarily economic",
        "prevailing in an era of great power competition.",
    ],
}


def clean_article(stem: str):  # type: ignore[no-untyped-def]
    meta = json.loads((CORPUS / f"{stem}.meta.json").read_text())
    return clean((CORPUS / f"{stem}.txt").read_text(), title=meta["title"])


def test_sample_covers_every_article():
    assert sorted(BODY) == ARTICLES


@pytest.mark.parametrize("stem", ARTICLES)
def test_no_navigation_or_promo_text_survives(stem):
    text = clean_article(stem).text.casefold()
    assert [p for p in PROMOS if p.casefold() in text] == []


@pytest.mark.parametrize("stem", ARTICLES)
def test_body_sentences_survive(stem):
    text = clean_article(stem).text
    assert [s for s in BODY[stem] if s not in text] == []


@pytest.mark.parametrize("stem", ARTICLES)
def test_no_paragraph_appears_twice(stem):
    paragraphs = [p for p in clean_article(stem).text.split("\n") if len(p) > 40]
    assert len(paragraphs) == len(set(paragraphs))


def test_the_paragraph_printed_twice_is_kept_once():
    text = clean_article("fp-china-russia-axis").text
    assert text.count("In July, nearly a dozen Chinese and Russian warships conducted 20 combat") == 1


def test_question_and_region_headings_become_sections():
    cfr = [s.title for s in clean_article("cfr-china-russia-backgrounder").sections]
    assert "What are their economic ties?" in cfr and "Are China and Russia allies?" in cfr
    usip = [s.title for s in clean_article("usip-china-russia-global-cooperation").sections]
    assert {"North Korea", "The Middle East", "The Arctic"} <= set(usip)
