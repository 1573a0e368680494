"""Write ``tests/fixtures/ifeval_lm_eval_parity.json``: lm-eval's IFEval verdicts on a fixed set of responses.

Each case is one instruction (id + kwargs) on one response; the fixture stores lm-eval's strict and loose
verdicts (``lm_eval/tasks/ifeval/utils.py``'s ``test_instruction_following_strict`` / ``_loose`` over the
checkers of ``instructions.py``, langdetect seeded with ``DetectorFactory.seed = 0``).
``tests/test_ifeval.py`` compares tms's offline checks (:mod:`tms.data.tasks.ifeval_checks`) with them::

    python tools/make_ifeval_fixture.py            # (re)write the fixture
    python tools/make_ifeval_fixture.py --check    # exit 1 if the fixture differs from what would be written

Needs ``lm_eval`` (``pip install --no-deps lm_eval``), ``langdetect``, ``nltk`` and ``immutabledict``.
Without nltk's ``punkt_tab`` data (never downloaded here: ``nltk.download`` is refused) the two checks that
need it are derived, each case marked in its ``reference`` field:

* ``change_case:capital_word_frequency`` (``reference: lm_eval/preserve_line``): lm-eval's checker with
  ``nltk.word_tokenize(text, preserve_line=True)``, i.e. the Treebank tokenizer on the whole text instead of
  on each Punkt sentence. Punkt only cuts after ``.``/``?``/``!`` (and closing quotes or brackets after
  them), and a cut there only separates sentence-final punctuation, which is never upper-case; the
  generator checks this for every text it tokenises by counting upper-case tokens under *every* subset of
  those cut positions, and leaves a case out (``reference: null``) if any count differs.
* ``length_constraints:number_sentences`` (``reference: bound``): Punkt gives a non-empty text between 1
  and (number of ``.?!`` characters + 1) sentences. The verdict is kept only when lm-eval's checker gives
  the same strict and loose verdict at both ends of that range (the comparison is monotone in the
  count); otherwise the case stays in the fixture with ``strict``/``loose`` null, and is not compared.

With ``punkt_tab`` installed every case is lm-eval's verdict as is (``reference: lm_eval``).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import itertools
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "ifeval_lm_eval_parity.json"
sys.path.insert(0, str(ROOT))

KW = "keywords:"
LANG = "language:response_language"
LEN = "length_constraints:"
CONTENT = "detectable_content:"
FMT = "detectable_format:"
COMB = "combination:"
SE = "startend:"
CASE = "change_case:"
CAPS = "change_case:capital_word_frequency"
SENT = "length_constraints:number_sentences"
DETECTS = {LANG: lambda text: True, CASE + "english_capital": str.isupper, CASE + "english_lowercase": str.islower}

# (case id, instruction id, kwargs, response)
CASES = [
    # keywords
    ("existence-pass", KW + "existence", {"keywords": ["banana", "apple"]}, "I like Apple and BANANA."),
    ("existence-substring", KW + "existence", {"keywords": ["apple"]}, "Pineapples are sweet."),
    ("existence-fail", KW + "existence", {"keywords": ["banana", "apple"]}, "I like apples only."),
    ("frequency-at-least", KW + "frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"},
     "A cat and a cat."),
    ("frequency-at-least-substrings", KW + "frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"},
     "Cats, a category and a concatenation."),
    ("frequency-less-than-fail", KW + "frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"},
     "CAT cat."),
    ("frequency-keyword-spaces", KW + "frequency", {"keyword": " dog ", "frequency": 1, "relation": "at least"},
     "My dog."),
    ("forbidden-word-boundary", KW + "forbidden_words", {"forbidden_words": ["red", "blue"]},
     "The sky is azure, reddish at dusk."),
    ("forbidden-case", KW + "forbidden_words", {"forbidden_words": ["red", "blue"]}, "The sky is Blue."),
    ("forbidden-hyphen", KW + "forbidden_words", {"forbidden_words": ["blue"]}, "A blue-green sea."),
    ("letter-at-least", KW + "letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"},
     "Zebras zigzag lazily."),
    ("letter-less-than", KW + "letter_frequency", {"letter": "e", "let_frequency": 3, "let_relation": "less than"},
     "Everything here."),
    ("letter-upper-kwarg", KW + "letter_frequency", {"letter": "Q", "let_frequency": 2, "let_relation": "at least"},
     "quick quiet"),
    # language
    ("language-es", LANG, {"language": "es"}, "El perro es muy grande y la casa está en el centro de la ciudad."),
    ("language-es-got-en", LANG, {"language": "es"}, "The dog is very big and the house is in the center of town."),
    ("language-de", LANG, {"language": "de"},
     "Der Hund ist nicht groß, aber er läuft jeden Morgen mit mir durch den Park."),
    ("language-fr", LANG, {"language": "fr"},
     "Nous sommes allés au marché ce matin pour acheter des pommes et du pain frais."),
    ("language-it-got-es", LANG, {"language": "it"},
     "Mañana vamos a la playa con nuestros amigos si hace buen tiempo."),
    ("language-pt", LANG, {"language": "pt"},
     "Eu não sei se vou conseguir chegar a tempo para a reunião de amanhã."),
    ("language-fi", LANG, {"language": "fi"}, "Minä asun Helsingissä ja käyn töissä joka päivä junalla."),
    ("language-sw", LANG, {"language": "sw"}, "Habari za asubuhi? Mimi ninaenda sokoni kununua matunda na mboga."),
    ("language-ru", LANG, {"language": "ru"}, "Сегодня хорошая погода, и мы пойдём гулять в парк."),
    ("language-uk-got-ru", LANG, {"language": "uk"}, "Сегодня хорошая погода, и мы пойдём гулять в парк."),
    ("language-ja", LANG, {"language": "ja"}, "今日はとても良い天気ですね。公園に散歩に行きましょう。"),
    ("language-ko", LANG, {"language": "ko"}, "오늘은 날씨가 정말 좋네요. 공원에 산책하러 갑시다."),
    ("language-hi", LANG, {"language": "hi"}, "आज मौसम बहुत अच्छा है और हम पार्क में घूमने जा रहे हैं।"),
    ("language-ar", LANG, {"language": "ar"}, "الطقس جميل اليوم، وسنذهب إلى الحديقة للتنزه مع الأصدقاء."),
    ("language-fa-got-ar", LANG, {"language": "fa"}, "الطقس جميل اليوم، وسنذهب إلى الحديقة للتنزه مع الأصدقاء."),
    ("language-en-no-stopwords", LANG, {"language": "en"},
     "Wonderful sunny weather today; children playing outside, happy families walking dogs everywhere."),
    ("language-de-got-no-stopwords-en", LANG, {"language": "de"},
     "Wonderful sunny weather today; children playing outside, happy families walking dogs everywhere."),
    ("language-no-letters", LANG, {"language": "fr"}, "1234 5678 !!! ???"),
    ("language-mixed-mostly-en", LANG, {"language": "en"},
     "I visited Paris last summer and every morning I ordered un café au lait at the same little bakery."),
    # length constraints
    ("sentences-one-at-least-3", SENT, {"num_sentences": 3, "relation": "at least"}, "Just one sentence here"),
    ("sentences-few-less-than-5", SENT, {"num_sentences": 5, "relation": "less than"}, "One. Two? Three!"),
    ("sentences-at-least-1", SENT, {"num_sentences": 1, "relation": "at least"}, "Hello there. How are you?"),
    ("sentences-many-at-least-2", SENT, {"num_sentences": 2, "relation": "at least"},
     "It rained. We stayed in. We read books. Then the sun came out."),
    ("sentences-abbreviations", SENT, {"num_sentences": 3, "relation": "less than"},
     "Dr. Smith met Mr. Jones at 3 p.m. today. They talked."),
    ("sentences-ellipsis", SENT, {"num_sentences": 2, "relation": "at least"}, "Well... I am not sure. Maybe."),
    ("paragraphs-pass", LEN + "number_paragraphs", {"num_paragraphs": 2}, "First part.\n***\nSecond part."),
    ("paragraphs-edges", LEN + "number_paragraphs", {"num_paragraphs": 2}, "***\nFirst part.\n***\nSecond part.\n***"),
    ("paragraphs-empty-middle", LEN + "number_paragraphs", {"num_paragraphs": 3}, "One.\n***\n***\nThree."),
    ("paragraphs-one", LEN + "number_paragraphs", {"num_paragraphs": 2}, "Only one paragraph."),
    ("words-at-least", LEN + "number_words", {"num_words": 5, "relation": "at least"}, "one two three four five"),
    ("words-contractions", LEN + "number_words", {"num_words": 6, "relation": "less than"},
     "It's well-known, isn't it?"),
    ("words-less-than-fail", LEN + "number_words", {"num_words": 3, "relation": "less than"}, "a b c"),
    ("nth-first-word", LEN + "nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"}, "Intro text.\n\nHowever, this is the second."),
    ("nth-first-word-quoted", LEN + "nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "hello"}, '"Hello!" she said.\n\nThe end.'),
    ("nth-first-word-count-wrong", LEN + "nth_paragraph_first_word",
     {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "but"}, "Intro.\n\nBut second.\n\n\n\n"),
    ("nth-first-word-triple-newline", LEN + "nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"}, "First.\n\n\nThen second."),
    ("nth-first-word-wrong-word", LEN + "nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"}, "Intro text.\n\nBut this is the second."),
    # detectable content
    ("placeholders-pass", CONTENT + "number_placeholders", {"num_placeholders": 2},
     "Dear [name], you live at [address]."),
    ("placeholders-fail", CONTENT + "number_placeholders", {"num_placeholders": 2}, "Dear [name]."),
    ("postscript-ps", CONTENT + "postscript", {"postscript_marker": "P.S."}, "Hello.\nP.S. See you soon."),
    ("postscript-lowercase", CONTENT + "postscript", {"postscript_marker": "P.S."}, "Hello. p.s. see you."),
    ("postscript-pps-vs-ps", CONTENT + "postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.S. One thing."),
    ("postscript-pps", CONTENT + "postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP. P. S. One more thing."),
    ("postscript-other-marker", CONTENT + "postscript", {"postscript_marker": "Note:"}, "Body.\n\nNOTE: read this."),
    # detectable format
    ("bullets-pass", FMT + "number_bullet_lists", {"num_bullets": 2}, "* one\n* two"),
    ("bullets-mixed-too-many", FMT + "number_bullet_lists", {"num_bullets": 2}, "* one\n* two\n- three"),
    ("bullets-bold-line", FMT + "number_bullet_lists", {"num_bullets": 1}, "**Title**\n* only point"),
    ("bullets-indented", FMT + "number_bullet_lists", {"num_bullets": 3}, "Intro:\n  * a\n  - b\n\t* c"),
    ("constrained-pass", FMT + "constrained_response", {}, "After thinking: My answer is maybe."),
    ("constrained-fail", FMT + "constrained_response", {}, "my answer is yes."),
    ("highlights-pass", FMT + "number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**"),
    ("highlights-empty", FMT + "number_highlighted_sections", {"num_highlights": 1}, "** ** and * *"),
    ("highlights-multiline", FMT + "number_highlighted_sections", {"num_highlights": 1}, "*not\nhighlighted*"),
    ("sections-pass", FMT + "multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nfoo\nSection 2\nbar"),
    ("sections-case", FMT + "multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "SECTION 1\nfoo\nSECTION 2\nbar"),
    ("sections-no-space", FMT + "multiple_sections", {"section_spliter": "PARAGRAPH", "num_sections": 2},
     "PARAGRAPH1 foo PARAGRAPH2 bar"),
    ("json-fenced", FMT + "json_format", {}, '```json\n{"a": 1}\n```'),
    ("json-preamble", FMT + "json_format", {}, 'Sure, here is the JSON:\n{"a": 1}'),
    ("json-bare-list", FMT + "json_format", {}, "[1, 2, 3]"),
    ("json-invalid", FMT + "json_format", {}, "{'a': 1}"),
    ("title-pass", FMT + "title", {}, "<<My Title>>\nSome text."),
    ("title-empty", FMT + "title", {}, "<< >>\nSome text."),
    ("title-multiline", FMT + "title", {}, "<<My\nTitle>>"),
    # combination
    ("two-responses-pass", COMB + "two_responses", {}, "Answer one.\n******\nAnswer two."),
    ("two-responses-same", COMB + "two_responses", {}, "Answer one.\n******\nAnswer one."),
    ("two-responses-three", COMB + "two_responses", {}, "A\n******\nB\n******\nC"),
    ("two-responses-edges", COMB + "two_responses", {}, "******\nA\n******\nB\n******"),
    ("repeat-prompt-pass", COMB + "repeat_prompt", {"prompt_to_repeat": "Write a poem."},
     "  write a POEM. Roses are red."),
    ("repeat-prompt-fail", COMB + "repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "Roses are red."),
    # start / end
    ("end-pass", SE + "end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?"),
    ("end-quoted", SE + "end_checker", {"end_phrase": "Any other questions?"}, '"Done. any other questions?"  '),
    ("end-bold", SE + "end_checker", {"end_phrase": "Any other questions?"}, "Bye. **Any other questions?**"),
    ("end-fail", SE + "end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Done."),
    ("quotation-pass", SE + "quotation", {}, '  "Hello world"\n'),
    ("quotation-curly", SE + "quotation", {}, "“Hello world”"),
    ("quotation-single-char", SE + "quotation", {}, '"'),
    # change case
    (CAPS + "-at-least", CAPS, {"capital_frequency": 2, "capital_relation": "at least"},
     "This is VERY IMPORTANT news."),
    (CAPS + "-less-than-fail", CAPS, {"capital_frequency": 2, "capital_relation": "less than"},
     "THE END IS NEAR."),
    (CAPS + "-contractions", CAPS, {"capital_frequency": 4, "capital_relation": "at least"},
     "I DON'T THINK SO."),
    (CAPS + "-hyphenated", CAPS, {"capital_frequency": 2, "capital_relation": "at least"},
     "A STATE-OF-THE-ART design."),
    (CAPS + "-acronym-dots", CAPS, {"capital_frequency": 2, "capital_relation": "at least"},
     "He moved to the U.S. last year."),
    (CAPS + "-digits", CAPS, {"capital_frequency": 1, "capital_relation": "at least"}, "We beat COVID-19 together."),
    (CAPS + "-cannot", CAPS, {"capital_frequency": 2, "capital_relation": "at least"}, "You CANNOT do that."),
    (CAPS + "-possessive", CAPS, {"capital_frequency": 2, "capital_relation": "less than"},
     "NASA's rocket launched."),
    (CAPS + "-sentences", CAPS, {"capital_frequency": 3, "capital_relation": "at least"},
     "STOP. WAIT! Are you SURE? yes."),
    ("english-capital-pass", CASE + "english_capital", {}, "THIS IS THE ANSWER TO YOUR QUESTION."),
    ("english-capital-mixed", CASE + "english_capital", {}, "This is the answer to your question."),
    ("english-capital-french", CASE + "english_capital", {}, "LE CHAT EST SUR LA TABLE ET IL NE VEUT PAS PARTIR."),
    ("english-capital-digits", CASE + "english_capital", {}, "2024 !!!"),
    ("english-lowercase-pass", CASE + "english_lowercase", {}, "this is the answer to your question."),
    ("english-lowercase-spanish", CASE + "english_lowercase", {}, "el perro es muy grande y la casa está en el centro."),
    ("english-lowercase-capital", CASE + "english_lowercase", {}, "This is the answer."),
    ("english-lowercase-no-stopwords", CASE + "english_lowercase", {},
     "wonderful sunny weather today; children playing outside, happy families walking dogs everywhere."),
    # punctuation
    ("no-comma-pass", "punctuation:no_comma", {}, "No commas here."),
    ("no-comma-fail", "punctuation:no_comma", {}, "Well, here is one."),
    ("no-comma-fullwidth", "punctuation:no_comma", {}, "你好，世界"),
    # loose grading: a preamble line and markdown
    ("loose-json-preamble", FMT + "json_format", {}, 'Here it is:\n```json\n{"a": [1, 2]}\n```'),
    ("loose-quotation-preamble", SE + "quotation", {}, 'Sure!\n"Quoted answer"'),
    ("loose-lowercase-title", CASE + "english_lowercase", {}, "Title\nthis is the body of the answer."),
    ("loose-no-comma-last-line", "punctuation:no_comma", {}, "No commas in the body\nThanks, bye"),
]


def _upper_count(tokenize, text: str) -> int:
    return sum(1 for token in tokenize(text) if token.isupper())


def _cut_positions(text: str) -> list[int]:
    """Every place Punkt could end a sentence in ``text`` (a superset, whatever its trained parameters).

    nltk's own ``PunktLanguageVars``: each match of its period-context regex (an end char followed by
    punctuation or by whitespace and a token), and where its boundary realignment would move that cut
    (past closing quotes or brackets that start the next sentence).
    """
    from nltk.tokenize.punkt import PunktLanguageVars

    lang = PunktLanguageVars()
    cuts = set()
    for m in lang.period_context_re().finditer(text):
        cuts.add(m.end())
        start = m.start("next_tok") if m.group("next_tok") else m.end()
        moved = lang.re_boundary_realignment.match(text[start:])
        if moved:
            cuts.add(start + len(moved.group(0).rstrip()))
    return sorted(c for c in cuts if 0 < c < len(text))


class Derived:
    """The two derivations used without ``punkt_tab`` (see the module docstring)."""

    def __init__(self, nltk, instructions_util):
        from nltk.tokenize import NLTKWordTokenizer

        self.treebank = NLTKWordTokenizer()
        self.util = instructions_util
        self.nltk = nltk
        self.sentence_mode = "low"

    def word_tokenize(self, text: str, language: str = "english", preserve_line: bool = False) -> list[str]:
        """``nltk.word_tokenize(text, preserve_line=True)``, refused unless every Punkt cut gives the same count."""
        whole = self.treebank.tokenize(text)
        cuts = _cut_positions(text)
        if len(cuts) > 14:
            raise ValueError(f"too many possible sentence cuts ({len(cuts)}) to check")
        count = sum(1 for t in whole if t.isupper())
        for k in range(1, len(cuts) + 1):
            for chosen in itertools.combinations(cuts, k):
                bounds = [0, *chosen, len(text)]
                parts = [text[a:b].strip() for a, b in zip(bounds, bounds[1:])]
                got = sum(_upper_count(self.treebank.tokenize, p) for p in parts if p)
                if got != count:
                    raise ValueError(f"upper-case token count depends on sentence cuts ({count} vs {got})")
        return whole

    def count_sentences(self, text: str) -> int:
        """The fewest (1) or the most (``.?!`` characters + 1) sentences Punkt can find in ``text``."""
        if not text.strip():
            return 0
        return 1 if self.sentence_mode == "low" else len(re.findall(r"[.?!]", text)) + 1


def verdicts(utils, instruction_id: str, kwargs: dict, response: str) -> tuple[bool, bool]:
    example = utils.InputExample(key=0, instruction_id_list=[instruction_id], prompt="", kwargs=[kwargs])
    strict = utils.test_instruction_following_strict(example, response).follow_instruction_list[0]
    loose = utils.test_instruction_following_loose(example, response).follow_instruction_list[0]
    return bool(strict), bool(loose)


def langdetect_stable(text_variants: list[str]) -> bool:
    """Whether langdetect gives the same answer under seeds 0-9 for every text (lm-eval runs it unseeded)."""
    import langdetect
    from langdetect.detector_factory import DetectorFactory, init_factory

    init_factory()
    factory = langdetect.detector_factory._factory
    for text in text_variants:
        answers = set()
        for seed in range(10):
            detector = factory.create()
            detector.seed = seed
            detector.append(text)
            try:
                answers.add(detector.detect())
            except langdetect.LangDetectException:
                answers.add(None)
        if len(answers) > 1:
            return False
    assert DetectorFactory.seed == 0
    return True


def build() -> dict:
    import nltk

    from tms.data.tasks import ifeval_reference
    from tms.data.tasks.ifeval_checks import loose_variants

    punkt = ifeval_reference.lm_eval_unavailable() is None
    refused = []
    if not punkt:
        def refuse(*args, **kwargs):  # lm-eval's import asks for punkt_tab: never download
            refused.append(args)
            return False

        nltk.download = refuse
    utils = ifeval_reference.lm_eval_ifeval(require_punkt=punkt)
    if refused:
        print("(lm-eval's import asked nltk to download punkt_tab: refused, nothing was downloaded)")
    instructions_util = utils.instructions_registry.instructions.instructions_util
    derived = None if punkt else Derived(nltk, instructions_util)
    cases, unstable = [], []
    for case_id, instruction_id, kwargs, response in CASES:
        entry = {"id": case_id, "instruction_id": instruction_id, "kwargs": kwargs, "response": response}
        if punkt or instruction_id not in (CAPS, SENT):
            entry["strict"], entry["loose"] = verdicts(utils, instruction_id, kwargs, response)
            entry["reference"] = "lm_eval"
        elif instruction_id == CAPS:
            with _patched(nltk, "word_tokenize", derived.word_tokenize):
                try:
                    entry["strict"], entry["loose"] = verdicts(utils, instruction_id, kwargs, response)
                    entry["reference"] = "lm_eval/preserve_line"
                except ValueError as err:
                    entry.update(strict=None, loose=None, reference=None, why=str(err))
        else:
            with _patched(instructions_util, "count_sentences", derived.count_sentences):
                derived.sentence_mode = "low"
                low = verdicts(utils, instruction_id, kwargs, response)
                derived.sentence_mode = "high"
                high = verdicts(utils, instruction_id, kwargs, response)
            if low == high:
                entry["strict"], entry["loose"] = low
                entry["reference"] = "bound"
            else:
                entry.update(strict=None, loose=None, reference=None,
                             why="the verdict depends on how Punkt splits the text (needs punkt_tab)")
        if instruction_id in DETECTS:  # the texts lm-eval hands to langdetect (after its case test)
            if not langdetect_stable([t for t in loose_variants(response) if t.strip() and DETECTS[instruction_id](t)]):
                unstable.append(case_id)
        cases.append(entry)
    if unstable:
        raise SystemExit(f"langdetect is not stable across seeds on cases {unstable}: choose other texts")
    return {
        "about": "lm-eval's IFEval verdicts (strict, loose) on fixed responses; written by tools/make_ifeval_fixture.py",
        "reference": {
            "lm_eval": md.version("lm_eval"),
            "langdetect": md.version("langdetect"),
            "nltk": md.version("nltk"),
            "langdetect_seed": 0,
            "punkt_tab": punkt,
        },
        "derived": {} if punkt else {
            CAPS: "lm-eval's checker with nltk.word_tokenize(preserve_line=True); every Punkt cut checked to give "
                  "the same count of upper-case tokens (reference: lm_eval/preserve_line)",
            SENT: "kept only where lm-eval's verdict is the same for 1 and for (.?! count + 1) sentences "
                  "(reference: bound); other cases have null verdicts",
        },
        "without_verdict": {c["id"]: c["why"] for c in cases if c["strict"] is None},
        "cases": cases,
    }


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the fixture differs")
    args = parser.parse_args(argv)
    text = json.dumps(build(), indent=1, ensure_ascii=False) + "\n"
    if args.check:
        same = OUT.is_file() and OUT.read_text() == text
        print(f"{OUT.relative_to(ROOT)}: {'up to date' if same else 'differs'}")
        return 0 if same else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    cases = json.loads(text)["cases"]
    compared = [c for c in cases if c["strict"] is not None]
    print(f"wrote {OUT.relative_to(ROOT)}: {len(cases)} cases, {len(compared)} with reference verdicts, "
          f"{len({c['instruction_id'] for c in compared})} instruction ids")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
