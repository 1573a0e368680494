"""IFEval instruction checkers, re-implemented offline (no nltk; langdetect when installed).

Semantics follow the official checker (google-research ``instruction_following_eval``, copied in
lm-evaluation-harness ``lm_eval/tasks/ifeval/instructions.py``): one function per instruction id,
``check(response, **kwargs) -> bool``, with the kwargs of the dataset row (None-valued keys
removed). Strict grading runs the check on the response; loose grading (official
``test_instruction_following_loose``) passes if any of eight variants passes: the response with
its first line, last line or both removed, each with and without ``*`` characters.

All 25 instruction types of the official registry are covered:
``keywords:`` existence, frequency, forbidden_words, letter_frequency; ``language:``
response_language; ``length_constraints:`` number_sentences, number_paragraphs, number_words,
nth_paragraph_first_word; ``detectable_content:`` number_placeholders, postscript;
``detectable_format:`` number_bullet_lists, constrained_response, number_highlighted_sections,
multiple_sections, json_format, title; ``combination:`` two_responses, repeat_prompt;
``startend:`` end_checker, quotation; ``change_case:`` capital_word_frequency, english_capital,
english_lowercase; ``punctuation:`` no_comma.

Language identification (``response_language``, ``english_capital``, ``english_lowercase``) is the
official one when ``langdetect`` is installed (a core dependency of tms): ``langdetect.detect(text)
== language``, and a text langdetect cannot read (``LangDetectException``, e.g. no letters) counts
as followed, exactly as lm-eval does. tms sets ``DetectorFactory.seed = 0`` (unless a seed is
already set) so that detection is deterministic; lm-eval 0.4.13 leaves it unseeded, so its verdicts
on borderline texts can change from run to run. Without langdetect, :func:`detect_language` (a
small heuristic: dominant Unicode script, then distinctive letters or stop words, the 30 languages
IFEval uses) decides, and a language it cannot tell counts as **not** followed (a warning says so
once); only a text without any letter passes, as with langdetect.

Where lm-eval needs nltk's ``punkt_tab`` data, which tms does not use:

* ``number_sentences`` counts sentences with the official module's own regex splitter
  (:func:`split_into_sentences`, from ``instructions_util.split_into_sentences``) instead of the
  nltk Punkt model, which needs the ``punkt_tab`` download. They can disagree on abbreviations
  and unusual punctuation.
* ``capital_word_frequency`` tokenises with :func:`word_tokens`, a port of nltk's Treebank word
  tokenizer (``NLTKWordTokenizer``), applied to the whole response; ``nltk.word_tokenize`` first
  splits it into Punkt sentences (which needs ``punkt_tab``) and tokenises each. Punkt cuts only
  after ``.?!`` (and closing quotes or brackets after them), where the Treebank rules then split
  off punctuation that is never upper-case, so the number of upper-case tokens, all the check
  counts, comes out the same (``tools/make_ifeval_fixture.py`` checks this on every fixture text
  for every set of cuts Punkt could make).

Where lm-eval and its data are installed, :class:`~tms.data.tasks.ifeval.IFEvalTask` can grade with
lm-eval's own checkers instead (``checker="lm_eval"``, :mod:`tms.data.tasks.ifeval_reference`);
``tests/test_ifeval.py`` measures how often these checks agree with them.

Also: kwargs are kept unless None (lm-eval drops every falsy value), and a checker that raises
(bad kwargs) scores False instead of crashing. Unknown instruction ids score False (strict and
loose) and are logged once each, so a newer IFEval release cannot silently inflate scores.
"""
from __future__ import annotations

import collections
import functools
import json
import logging
import re
import string
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)
_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)

# -- text utilities -----------------------------------------------------------------------------
_ALPHABETS = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (
    r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|This\s|Wherever)"
)
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"


def split_into_sentences(text: str) -> list[str]:
    """Regex sentence splitter of the official ``instructions_util.split_into_sentences``."""
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(r"\.{2,}", lambda m: "<prd>" * len(m.group(0)) + "<stop>", text)
    text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHABETS + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHABETS + "[.]", " \\1<prd>", text)
    for a, b in ((".”", "”."), ('."', '".'), ('!"', '"!'), ('?"', '"?')):
        text = text.replace(a, b)
    for mark in ".?!":
        text = text.replace(mark, mark + "<stop>")
    sentences = [s.strip() for s in text.replace("<prd>", ".").split("<stop>")]
    return sentences[:-1] if sentences and not sentences[-1] else sentences


def count_words(text: str) -> int:
    """Number of ``\\w+`` tokens (the official ``RegexpTokenizer(r"\\w+")``)."""
    return len(re.findall(r"\w+", text))


# A port of nltk 3.10's NLTKWordTokenizer.tokenize (Apache-2.0), the tokenizer ``nltk.word_tokenize`` runs
# on each sentence; ``redos.compile`` there is ``re.compile``, and its one possessive ``*+`` is a plain ``*``
# here (same matches: what follows it must be whitespace up to the end) so that Python 3.10 compiles it.
_TB_STARTING_QUOTES = (
    (re.compile("([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r"^\""), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ \(\[{<])(\"|\'{2})"), r"\1 `` "),
    (re.compile(r"(?i)(?<!\w)(\')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)"), r"\1 "),
)
_TB_PUNCTUATION = (
    (re.compile(r"([^\.])(\.)([\]\)}>\"\'»”’ ]*)\s*$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile("[\u2012-\u2015]"), r" \g<0> "),
    (re.compile(r"([^\.])(\.)([\]\)}>\"\']*)\s*$"), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
    (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> "),
    (re.compile(r"--"), r" -- "),
)
_TB_ENDING_QUOTES = (
    (re.compile("([»”’])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"\s+"), " "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
)
_TB_CONTRACTIONS = tuple(re.compile(p) for p in (
    r"(?i)\b(can)(?#X)(not)\b", r"(?i)\b(d)(?#X)('ye)\b", r"(?i)\b(gim)(?#X)(me)\b", r"(?i)\b(gon)(?#X)(na)\b",
    r"(?i)\b(got)(?#X)(ta)\b", r"(?i)\b(lem)(?#X)(me)\b", r"(?i)\b(more)(?#X)('n)\b", r"(?i)\b(wan)(?#X)(na)(?=\s)",
    r"(?i) ('t)(?#X)(is)\b", r"(?i) ('t)(?#X)(was)\b",
))


def word_tokens(text: str) -> list[str]:
    """nltk's Treebank word tokens of ``text`` taken whole (``nltk.word_tokenize(text, preserve_line=True)``).

    The rules of ``NLTKWordTokenizer.tokenize`` in order: starting quotes, punctuation (the final
    period, ``,`` and ``:`` unless before a digit, ``...``, ``;@#$%&``, dashes, ``?!``, ``*``),
    brackets, ``--``, ending quotes and ``'s``/``n't``-style suffixes, then ``cannot``-style
    contractions. Periods inside a text stay on their word (``U.S.``, ``them.``).
    """
    for pattern, repl in _TB_STARTING_QUOTES + _TB_PUNCTUATION:
        text = pattern.sub(repl, text)
    text = " " + text + " "
    for pattern, repl in _TB_ENDING_QUOTES:
        text = pattern.sub(repl, text)
    for pattern in _TB_CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


_SCRIPTS = (  # (name, ranges); a letter counts for the first script whose range holds it
    ("latin", ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x1E00, 0x1EFF))),
    ("cyrillic", ((0x400, 0x4FF),)), ("arabic", ((0x600, 0x6FF), (0x750, 0x77F), (0xFB50, 0xFEFF))),
    ("hebrew", ((0x590, 0x5FF),)), ("devanagari", ((0x900, 0x97F),)), ("bn", ((0x980, 0x9FF),)),
    ("pa", ((0xA00, 0xA7F),)), ("gu", ((0xA80, 0xAFF),)), ("ta", ((0xB80, 0xBFF),)), ("te", ((0xC00, 0xC7F),)),
    ("kn", ((0xC80, 0xCFF),)), ("ml", ((0xD00, 0xD7F),)), ("th", ((0xE00, 0xE7F),)),
    ("kana", ((0x3040, 0x30FF),)), ("han", ((0x4E00, 0x9FFF),)),
    ("ko", ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))),
)
_STOPWORD_TEXT = {
    "en": "the and is are of to in that it with for this you was be have not on as",
    "es": "el la los las y es del por una con que en se para más pero está muy también",
    "pt": "o os as não um uma é do da dos das em com para que você mais são muito também eu isso já ao",
    "fr": "le la les et est des du une un que pas pour dans sur avec ce il je vous nous",
    "de": "der die das und ist nicht ein eine zu mit den dem sich auf für ich sie es auch",
    "it": "il lo la gli le e è di che non un una per con del della sono mi anche",
    "pl": "i w nie na się z jest to że do jak ale co ten są być",
    "fi": "ja on ei että se oli ovat mutta kun joka tämä myös hän ole kanssa",
    "sw": "na ya wa kwa ni za la katika hii kuwa pia cha yake hiyo lakini",
    "vi": "và của là có không những được trong cho người các một này",
    "hi": "है हैं और का की के में से यह नहीं को",
    "mr": "आहे आणि या ते नाही आहेत च्या मध्ये हे",
    "ne": "छ छन् र को मा हो गर्न पनि यो हुन्छ",
}
_STOPWORDS = {lang: set(words.split()) for lang, words in _STOPWORD_TEXT.items()}
_VIETNAMESE = re.compile("[ăđơư\u1ea0-\u1ef9]")
_WORD_EDGES = string.punctuation + "।॥“”‘’«»¿¡"
_LATIN = ("en", "es", "pt", "fr", "de", "it", "pl", "fi", "sw", "vi")


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of ``text`` by a heuristic, or None when it cannot tell.

    The dominant Unicode script decides most languages; within a script: Urdu/Persian/Arabic by
    letters only Urdu (ٹ ڈ ڑ ں ے) or Persian (پ چ ژ گ ک ی) use, Ukrainian/Russian/Bulgarian by
    і ї є ґ / ы э ё / ъ, Japanese by kana, and Latin-script and Devanagari languages by the
    most frequent stop words (Vietnamese first by its own letters: ă đ ơ ư and the tone-marked
    vowels of U+1EA0-U+1EF9).
    """
    counts: collections.Counter[str] = collections.Counter()
    for ch in text:
        code = ord(ch)
        for script, ranges in _SCRIPTS:
            if any(lo <= code <= hi for lo, hi in ranges):
                counts[script] += 1
                break
    if not counts:
        return None
    script = counts.most_common(1)[0][0]
    if script == "han":
        return "ja" if counts["kana"] else "zh"
    if script == "kana":
        return "ja"
    if script == "hebrew":
        return "he"
    if script == "arabic":
        return "ur" if re.search("[ٹڈڑںے]", text) else "fa" if re.search("[پچژگکی]", text) else "ar"
    if script == "cyrillic":
        if re.search("[іїєґІЇЄҐ]", text):
            return "uk"
        return "bg" if "ъ" in text and not re.search("[ыэёЫЭЁ]", text) else "ru"
    words = [w.strip(_WORD_EDGES) for w in text.lower().split()]
    if script == "devanagari":
        return _vote(words, ("hi", "mr", "ne")) or "hi"
    if script == "latin":
        if len(_VIETNAMESE.findall(text.lower())) >= 2:
            return "vi"
        return _vote(words, _LATIN)
    return script


def _vote(words: Sequence[str], languages: Sequence[str]) -> str | None:
    scores = {lang: sum(w in _STOPWORDS[lang] for w in words) for lang in languages}
    best = max(scores.values())
    return None if best == 0 else max(languages, key=lambda lang: scores[lang])


@functools.lru_cache(maxsize=None)
def seeded_langdetect() -> Any:
    """The ``langdetect`` module with ``DetectorFactory.seed = 0`` (unless already seeded), or None if absent."""
    try:
        import langdetect
    except ImportError:
        return None
    if langdetect.DetectorFactory.seed is None:
        langdetect.DetectorFactory.seed = 0
    return langdetect


def is_language(text: str, language: str) -> bool:
    """Whether ``text`` is in ``language`` (ISO 639-1), as the official checker decides.

    With langdetect: ``langdetect.detect(text) == language``; a ``LangDetectException`` (no
    features, e.g. no letters) counts as followed, like lm-eval's ``ResponseLanguageChecker``.
    Without it: :func:`detect_language` must name ``language``; undecided is not followed, except
    for a text without letters (where langdetect raises, so the official checker passes).
    """
    langdetect = seeded_langdetect()
    if langdetect is not None:
        try:
            return langdetect.detect(text) == language
        except langdetect.LangDetectException:
            return True
    _warn_once(
        "no-langdetect",
        "IFEval: langdetect is not installed; language checks use a heuristic that scores an undecided "
        "language as not followed (pip install langdetect for the official detector)",
    )
    if not any(ch.isalpha() for ch in text):
        return True
    return detect_language(text) == language


def _compare(count: int, threshold: int, relation: str) -> bool:
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    raise ValueError(f"relation must be 'less than' or 'at least', got {relation!r}")


# -- the checks ---------------------------------------------------------------------------------
def keywords_existence(r: str, keywords: Sequence[str]) -> bool:
    return all(re.search(k, r, flags=re.IGNORECASE) for k in keywords)


def keywords_frequency(r: str, keyword: str, frequency: int, relation: str) -> bool:
    return _compare(len(re.findall(keyword.strip(), r, flags=re.IGNORECASE)), frequency, relation)


def forbidden_words(r: str, forbidden_words: Sequence[str]) -> bool:
    return not any(re.search(r"\b" + w + r"\b", r, flags=re.IGNORECASE) for w in forbidden_words)


def letter_frequency(r: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    return _compare(collections.Counter(r.lower())[letter.strip().lower()], let_frequency, let_relation)


def response_language(r: str, language: str) -> bool:
    return is_language(r, language)


def number_sentences(r: str, num_sentences: int, relation: str) -> bool:
    return _compare(len(split_into_sentences(r)), num_sentences, relation)


def number_paragraphs(r: str, num_paragraphs: int) -> bool:
    paragraphs = re.split(r"\s?\*\*\*\s?", r)
    count = len(paragraphs)
    for i, paragraph in enumerate(paragraphs):
        if not paragraph.strip():
            if i not in (0, len(paragraphs) - 1):
                return False
            count -= 1
    return count == num_paragraphs


def number_words(r: str, num_words: int, relation: str) -> bool:
    return _compare(count_words(r), num_words, relation)


def nth_paragraph_first_word(r: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    paragraphs = re.split(r"\n\n", r)
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count or not paragraphs[nth_paragraph - 1].strip():
        return False
    word = paragraphs[nth_paragraph - 1].strip().split()[0].strip().lstrip("'").lstrip('"')
    first = ""
    for ch in word:
        if ch in ".,?!'\"":
            break
        first += ch.lower()
    return count == num_paragraphs and first == first_word.lower()


def number_placeholders(r: str, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", r)) >= num_placeholders


def postscript(r: str, postscript_marker: str) -> bool:
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, r.lower(), flags=re.MULTILINE))


def number_bullet_lists(r: str, num_bullets: int) -> bool:
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def constrained_response(r: str) -> bool:
    return any(option in r.strip() for option in ("My answer is yes.", "My answer is no.", "My answer is maybe."))


def number_highlighted_sections(r: str, num_highlights: int) -> bool:
    single = [h for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double) >= num_highlights


def multiple_sections(r: str, section_spliter: str, num_sections: int) -> bool:
    sections = re.split(r"\s?" + section_spliter.strip() + r"\s?\d+\s?", r)
    return len(sections) - 1 >= num_sections


def json_format(r: str) -> bool:
    value = r.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(prefix)
    try:
        json.loads(value.removesuffix("```").strip())
    except ValueError:
        return False
    return True


def title(r: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


def two_responses(r: str) -> bool:
    valid = []
    parts = r.split("******")
    for i, part in enumerate(parts):
        if part.strip():
            valid.append(part)
        elif i not in (0, len(parts) - 1):
            return False
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def repeat_prompt(r: str, prompt_to_repeat: str) -> bool:
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


def end_checker(r: str, end_phrase: str) -> bool:
    return r.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(r: str) -> bool:
    value = r.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


def capital_word_frequency(r: str, capital_frequency: int, capital_relation: str) -> bool:
    return _compare(sum(1 for w in word_tokens(r) if w.isupper()), capital_frequency, capital_relation)


def english_capital(r: str) -> bool:
    return r.isupper() and is_language(r, "en")


def english_lowercase(r: str) -> bool:
    return r.islower() and is_language(r, "en")


def no_comma(r: str) -> bool:
    return "," not in r


CHECKS: dict[str, Callable[..., bool]] = {
    "keywords:existence": keywords_existence,
    "keywords:frequency": keywords_frequency,
    "keywords:forbidden_words": forbidden_words,
    "keywords:letter_frequency": letter_frequency,
    "language:response_language": response_language,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:number_words": number_words,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "detectable_content:number_placeholders": number_placeholders,
    "detectable_content:postscript": postscript,
    "detectable_format:number_bullet_lists": number_bullet_lists,
    "detectable_format:constrained_response": constrained_response,
    "detectable_format:number_highlighted_sections": number_highlighted_sections,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:json_format": json_format,
    "detectable_format:title": title,
    "combination:two_responses": two_responses,
    "combination:repeat_prompt": repeat_prompt,
    "startend:end_checker": end_checker,
    "startend:quotation": quotation,
    "change_case:capital_word_frequency": capital_word_frequency,
    "change_case:english_capital": english_capital,
    "change_case:english_lowercase": english_lowercase,
    "punctuation:no_comma": no_comma,
}


# -- grading ------------------------------------------------------------------------------------
def follows(instruction_id: str, response: str, kwargs: dict[str, Any] | None = None) -> bool:
    """Whether ``response`` follows one instruction (official strict check; empty fails)."""
    check = CHECKS.get(instruction_id)
    if check is None:
        _warn_once(instruction_id, f"IFEval: unknown instruction id {instruction_id!r} is scored as not followed")
        return False
    if not response.strip():
        return False
    try:
        return bool(check(response, **{k: v for k, v in (kwargs or {}).items() if v is not None}))
    except Exception as err:  # bad kwargs for this checker: not followed, never a crash
        _warn_once(f"{instruction_id}:{err}", f"IFEval: {instruction_id!r} raised {err!r}; scored as not followed")
        return False


def loose_variants(response: str) -> list[str]:
    """The eight responses the official loose grading tries (first/last line removed, no ``*``)."""
    lines = response.split("\n")
    base = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return base + [text.replace("*", "") for text in base]


def check_instructions(
    response: str, instruction_ids: Sequence[str], kwargs_list: Sequence[dict | None], loose: bool = False
) -> list[bool]:
    """Per-instruction results for one prompt, strict (official) or loose."""
    if len(instruction_ids) != len(kwargs_list):
        raise ValueError(f"{len(instruction_ids)} instruction ids but {len(kwargs_list)} kwargs dicts")
    candidates = loose_variants(response) if loose else [response]
    return [any(follows(i, text, kw) for text in candidates) for i, kw in zip(instruction_ids, kwargs_list)]
