"""Short-caption language ID (issue 27): common English words commoner elsewhere, names, explained rejections,
and the word rule against the one before it on real short captions (CLDR, Debian's unicode-cldr-core; the
gettext catalogs of Debian packages, test split)."""

from __future__ import annotations

import pytest

from vlmforge.pipeline.config import LanguageConfig
from vlmforge.pipeline.filter import language_eval, language_gettext
from vlmforge.pipeline.filter.language_id import LanguageId, judged_words

BEFORE = {"common_zipf": 0, "names": False, "short_words": False}  # the rule before the word rule
OPT_IN = {**BEFORE, "common_zipf": 3.0, "names": True}  # keeps more English, drops fewer non-English
SESSION_11 = {"letter_words": False}  # before session 13's change
SESSION_10 = {**SESSION_11, "name_margin": 2.0, "jargon_words": False}  # before session 11's two changes
SESSION_9 = {**SESSION_10, "rare_zipf": 0, "unknown_word_rejects": False}  # no rare and unknown words


def _judge(stage: LanguageId, text: str):
    return stage.judge_one(text, len(text.split()), stage.predict(text))


@pytest.fixture(scope="module")
def lang():
    return LanguageId(LanguageConfig(**OPT_IN))


@pytest.fixture(scope="module")
def words():
    return LanguageId(LanguageConfig())


def test_the_word_rule_is_the_default_and_the_lexicon_options_are_not():
    cfg = LanguageConfig()
    assert cfg.short_words and cfg.common_zipf == 0 and not cfg.names


@pytest.mark.parametrize("text", ["door", "fog", "axe", "red door", "Paris", "Kuala Lumpur"])
def test_common_english_words_and_names_are_kept(lang, words, text):
    before = LanguageId(LanguageConfig(**BEFORE))
    assert _judge(before, text)[2] == "wrong_language"  # what the rule before this one did
    assert _judge(lang, text)[2] is None
    assert _judge(words, text)[2] is None


@pytest.mark.parametrize("text", ["deur", "köd", "hache", "Suppe", "Schule", "Person mit Bart", "grote hond"])
def test_other_languages_stay_rejected_with_the_reason(lang, words, text):
    _, _, reason, detail = _judge(lang, text)
    assert reason == "wrong_language"
    assert "; lexicon: " in detail  # fastText's labels, then which lexicon test failed
    assert _judge(words, text)[2] == "wrong_language"


def test_names_are_set_aside_in_the_detail(lang):
    detail = _judge(lang, "Person mit Bart")[3]
    assert "(names Person Bart)" in detail and "de " in detail


@pytest.mark.parametrize(
    ("text", "word", "rival"),
    [("Tür", "Tür", "tr"), ("puerta", "puerta", "es"), ("red porta", "porta", "it")],
)
def test_a_word_common_only_in_a_rival_rejects_and_is_named(words, text, word, rival):
    _, _, reason, detail = _judge(words, text)
    assert reason == "wrong_language"
    assert f"words: foreign word: {word} en " in detail and f" {rival} " in detail, detail


@pytest.mark.parametrize("text", ["door", "Mayotte", "Kernel IPX table", "Ceuta"])
def test_the_word_rule_keeps_english_words_names_and_acronyms(words, text):
    assert words.words_decision(text)[0] == "en", words.words_decision(text)


@pytest.mark.parametrize("text", ["tar", "Nashorn", "dynamic reloc", "Yancowinna", "9 h", "grande stella"])
def test_undecided_words_are_left_to_fasttext(words, text):
    assert words.words_decision(text)[:2] == (None, None)


# Real captions of the development sets (CLDR, gettext-dev) that the session-9 word rule got wrong.
@pytest.mark.parametrize(
    "text", ["shuttlecock", "gibbous", "waxing gibbous moon", "Nipigon", "Clipperton Island", "stdout"]
)
def test_rare_words_english_knows_and_no_rival_knows_better_are_kept(words, text):
    assert _judge(LanguageId(LanguageConfig(**SESSION_9)), text)[2] == "wrong_language"
    lang, reason, why = words.words_decision(text)
    assert (lang, reason) == ("en", None) and "(rare " in why, why
    assert _judge(words, text)[2] is None


def test_a_rare_word_a_rival_large_lexicon_knows_better_stays_undecided_and_is_explained(words):
    """``Nashorn`` (rhinoceros) is in English's large list at Zipf 1.0 but German's at 3.0 (below German's
    small list): not kept as English; the rejection detail says why."""
    _, reason, detail = _judge(words, "Nashorn")[1:]
    assert reason == "wrong_language"
    assert "words: undecided: Nashorn en 1.0 de 3.0; lexicon: " in detail, detail


@pytest.mark.parametrize("text", ["theekopje", "deskorolka", "musehoved", "inhalering", "flutua"])
def test_a_lone_word_english_does_not_know_rejects_whatever_fasttext_says(words, text):
    top = words.predict(text)
    assert top[0][0] == "en" and top[0][1] >= 0.5  # fastText's n-grams call these English
    assert _judge(LanguageId(LanguageConfig(**SESSION_9)), text)[2] is None  # so the rule before kept them
    _, _, reason, detail = _judge(words, text)
    assert reason == "wrong_language" and f"words: unknown word: {text} en 0.0" in detail, detail


# Real one-word captions of CLDR's German and French sets that session 10 kept as names: nouns (German
# capitalises every noun) and native place names, far commoner in a rival than in English.
@pytest.mark.parametrize(
    ("text", "rival"),
    [("Welle", "de"), ("Krebs", "de"), ("Eis", "de"), ("Wurst", "de"), ("Schatz", "de"), ("Alger", "fr")],
)
def test_a_capitalised_word_much_commoner_in_a_rival_is_no_name(words, text, rival):
    assert _judge(LanguageId(LanguageConfig(**SESSION_10)), text)[2] is None  # read as a name before
    lang, reason, why = words.words_decision(text)
    assert (lang, reason) == (None, None) and why.startswith(f"undecided: {text} en "), why
    _, _, reason, detail = _judge(words, text)
    assert reason == "wrong_language" and f"words: undecided: {text} en " in detail and f" {rival} " in detail


def test_a_capitalised_word_in_the_name_margin_is_left_to_fasttext(words):
    """``Svalbard`` (en 2.6, nb 4.4) is undecided too; fastText reads the gettext caption as English."""
    assert words.words_decision("Svalbard (Arctic Region)")[0] is None
    assert _judge(words, "Svalbard (Arctic Region)")[2] is None
    assert words.words_decision("Ceuta")[0] == "en"  # es only 1.2 commoner: still a name


# Real English gettext-dev strings: one jargon word no lexicon knows, fastText's top-1 English below 0.5.
@pytest.mark.parametrize(
    ("text", "jargon"),
    [("fontdir device name", "fontdir"), ("invalid sprg number", "sprg"), ("show sortname", "sortname"),
     ("Bad register in postincrement", "postincrement"), ("iconv function not usable", "iconv")],
)
def test_jargon_words_no_lexicon_knows_are_neutral_among_english_words(words, text, jargon):
    top = words.predict(text)
    assert top[0][0] == "en" and top[0][1] < 0.5
    assert _judge(LanguageId(LanguageConfig(jargon_words=False)), text)[2] == "wrong_language"
    lang, reason, why = words.words_decision(text, top)
    assert (lang, reason) == ("en", None) and why.endswith(f"(jargon {jargon})"), why
    assert _judge(words, text)[2] is None
    assert words.words_decision(text)[0] is None  # without fastText's top-1, jargon stays undecided


# Real Danish, Italian and Swedish strings (gettext-dev, CLDR) with a word no lexicon knows, fastText's top-1
# English: their other words are commoner elsewhere, so the jargon is not neutral.
@pytest.mark.parametrize(
    ("text", "why"),
    [("parameterliste for lang", "jargon parameterliste (words together commoner in da)"),
     ("golfista donna", "jargon golfista (words together commoner in it)"),
     ("Cannot realloc IOBuffer data", "jargon realloc IOBuffer (1 en words)"),
     ("ieşire(output) standard", "ieşire en 0.0")],  # not ASCII: no jargon
)
def test_jargon_is_not_neutral_without_english_words_to_lean_on(words, text, why):
    _, _, reason, detail = _judge(words, text)
    assert reason == "wrong_language" and f"words: undecided: {why}; lexicon: " in detail, detail


# Real captions of the development sets (CLDR; gettext-dev) that session 11 kept: a conjunction of one
# letter was skipped, so only the names around it were judged.
@pytest.mark.parametrize(
    ("text", "why"),
    [("Bosnia y Herzegovina", "y en 5.0 es 7.4"), ("Wallis y Futuna", "y en 5.0 es 7.4"),
     ("chandelier à sept branches", "à en 3.7 fr 7.3"), ("Audio e video", "e en 5.3 it 7.5")],
)
def test_a_lone_letter_between_words_is_judged_as_a_word(words, text, why):
    assert _judge(LanguageId(LanguageConfig(**SESSION_11)), text)[2] is None
    _, _, reason, detail = _judge(words, text)
    assert reason == "wrong_language" and f"words: undecided: {why}; lexicon: " in detail, detail


@pytest.mark.parametrize(
    ("text", "judged"),
    [("Bosnia y Herzegovina", ["Bosnia", "y", "Herzegovina"]), ("12 h 30", []), ("type A", ["type"]),
     ("X y", []), ("eleven o’clock", ["eleven", "clock"]), ("Trinidad Y Tobago", ["Trinidad", "Tobago"])],
)
def test_only_a_lower_case_letter_between_two_words_is_judged(text, judged):
    assert judged_words(text, letters=True) == judged


@pytest.mark.parametrize("text", ["eleven o’clock", "Unregister a DNS-SD service", "type A blood"])
def test_english_letters_and_articles_stay_kept(words, text):
    assert _judge(words, text)[2] is None


def test_the_unknown_word_rule_spares_names_and_longer_captions(words):
    assert words.words_decision("Yancowinna")[1] is None  # capitalised: may be a name
    assert words.words_decision("write jobserver")[1] is None  # one unknown word among English ones
    assert LanguageId(LanguageConfig(unknown_word_rejects=False)).words_decision("theekopje")[1] is None


def test_the_word_rule_with_two_wanted_languages_keeps_either():
    stage = LanguageId(LanguageConfig(languages=["en", "de"]))
    assert stage.words_decision("Tür")[0] == "de" and stage.words_decision("door")[0] == "en"
    assert stage.words_decision("puerta")[1] == "wrong_language"


@pytest.mark.parametrize(
    ("msgid", "caption"),
    [("_Open", "Open"), ("Save As…", "Save As"), ("paper size\x04Index", "Index"), ("%s: bad", None),
     ("FILE", None), ("show_all", None), ("oldestXID value", None), ("a b c d e", None)],
)
def test_gettext_strings_are_cleaned_into_captions(msgid, caption):
    assert language_gettext.clean(msgid) == caption


@pytest.mark.skipif(not language_eval.available(), reason="apt-get install unicode-cldr-core")
def test_cldr_english_captions_another_language_writes_so_are_set_apart():
    """An English caption one of the other languages also writes (``Jakarta``, ``taxi``, ``合``) cannot be
    right on both sides: it is on neither, and reported apart."""
    elsewhere = {t.casefold() for lang in language_eval.OTHER_LANGUAGES
                 for t in (*language_eval.things(lang), *language_eval.names(lang))}
    english, others = language_eval.english(), language_eval.others()
    assert not any(t.casefold() in elsewhere for t in english)
    assert not {t.casefold() for t in english} & {t.casefold() for v in others.values() for t in v}
    ambiguous = language_eval.english(per_language=10**6, kind="ambiguous")
    assert {"Jakarta", "taxi", "合"} <= set(ambiguous) and all(t.casefold() in elsewhere for t in ambiguous)
    assert len(language_eval.english(per_language=10**6, kind="all")) == len(ambiguous) + len(
        language_eval.english(per_language=10**6)
    )


def test_a_caption_is_written_in_english_only_if_every_word_is_as_the_english_source_writes_it():
    words = language_eval.english_words(
        ["air pump", "El Salvador", "Y position", "Finnish (DAS)", "you've got mail", "table tennis"]
    )
    written = ("air", "Air", "AIR", "El", "DAS", "you've", "table tennis", "tennis table", "Mail air")
    assert all(language_eval.written_in_english(t, words) for t in written)
    # a lower-case word the source writes capitalised only; a word it writes as an acronym only; a letter;
    # a fragment of a word with an apostrophe; any word it does not write
    for text in ("el", "Das", "y", "ve", "tennis de table", "air-pump x", ""):
        assert not language_eval.written_in_english(text, words), text


@pytest.mark.skipif(not language_eval.available(), reason="apt-get install unicode-cldr-core")
def test_cldr_non_english_captions_the_english_source_writes_are_set_apart():
    """French ``air``, ``sport``, German ``Symbol``, Danish ``blond person``: every word is a word of CLDR's
    own English captions, so they read as English too: on neither side, reported apart. ``tennis de
    table`` (``de`` is not an English CLDR word of its own) stays non-English."""
    ambiguous = language_eval.others(per_language=10**6, kind="ambiguous")
    assert {"air", "sport"} <= set(ambiguous["fr"]) and "Symbol" in ambiguous["de"]
    assert "blond person" in ambiguous["da"] and not ambiguous["ru"]
    every = language_eval.others(per_language=10**6, kind="all")
    unambiguous = language_eval.others(per_language=10**6)
    assert "tennis de table" in unambiguous["fr"]
    for lang, captions in every.items():
        assert sorted(captions) == sorted(ambiguous[lang] + unambiguous[lang])
    assert language_eval.others(kind="all") != language_eval.others()  # the 500 are drawn from fewer


@pytest.mark.slow  # ~25 s: 8,000 captions through five rules
@pytest.mark.skipif(not language_eval.available(), reason="apt-get install unicode-cldr-core")
def test_cldr_short_captions_more_english_kept_for_little_recall():
    """Figures in the results of benchmarks/language_short.py (sets without ambiguous English captions):
    English kept / non-English dropped 0.952/0.945 before, 0.967/0.923 opt-in, 0.966/0.953 with the
    session-9 word rule, 0.980/0.954 with its rare and unknown words (session 10), 0.980/0.956 with
    `name_margin` and `jargon_words` (session 11; German 0.914 -> 0.932). Since session 13 non-English
    captions that read as English are set apart too: session 11's rule is 0.980/0.962 there, the default
    (`letter_words`) 0.980/0.963."""
    english, others = language_eval.english(), language_eval.others()
    rates = {}
    rules = (("before", BEFORE), ("now", OPT_IN), ("session 9", SESSION_9), ("session 10", SESSION_10),
             ("session 11", SESSION_11), ("words", {}))
    for name, cfg in ((name, LanguageConfig(**overrides)) for name, overrides in rules):
        stage = LanguageId(cfg)
        kept = sum(_judge(stage, t)[2] is None for t in english) / len(english)
        dropped = [sum(_judge(stage, t)[2] is not None for t in v) / len(v) for v in others.values()]
        rates[name] = (kept, sum(dropped) / len(dropped))
    assert rates["now"][0] >= rates["before"][0] + 0.01, rates
    assert rates["now"][1] >= 0.91, rates
    assert rates["words"][0] >= rates["before"][0] + 0.02, rates
    assert rates["words"][1] >= rates["before"][1], rates  # no recall given back
    assert rates["words"][0] >= rates["session 9"][0] + 0.01, rates  # rare words kept
    assert rates["words"][1] >= rates["session 9"][1], rates
    assert rates["words"][1] > rates["session 10"][1], rates  # capitalised nouns are no names
    assert rates["words"][0] >= rates["session 10"][0] - 0.001, rates
    assert rates["words"][1] > rates["session 11"][1], rates  # a letter between words: `Bosnia y Herzegovina`
    assert rates["words"][0] >= rates["session 11"][0], rates


@pytest.mark.slow  # ~15 s: 8,000 gettext captions (test split) through two rules
@pytest.mark.skipif(not language_gettext.available(), reason="no gettext catalogs in /usr/share/locale")
def test_gettext_test_split_the_word_rule_gives_back_no_recall():
    """Figures in the results of benchmarks/language_short.py (sets without ambiguous English captions):
    English kept / non-English dropped 0.921/0.969 before, 0.927/0.974 with the session-9 word rule,
    0.945/0.970 with rare and unknown words, 0.957/0.971 with `name_margin` and `jargon_words` (session
    11). On the sets of session 13 (non-English captions that read as English set apart too) session 11's
    rule and the default (`letter_words`, which changes no decision here) are 0.957/0.974. The split was
    held out while developing all of them."""
    english, others = language_gettext.english("test"), language_gettext.others("test")
    # Untranslated strings and names the catalogs' translations equal are ambiguous: on neither side.
    ambiguous = language_gettext.english("test", per_language=10**6, kind="ambiguous")
    assert {"Terminal", "Hong Kong", "Türkiye"} <= set(ambiguous) and not set(ambiguous) & set(english)
    # So are translations every word of which the English msgids write; `Das` is only an acronym there.
    ambiguous_others = language_gettext.others("test", per_language=10**6, kind="ambiguous")
    assert {"image SGI", "audio Ogg"} <= set(ambiguous_others["fr"])
    assert "Das Symbol" not in ambiguous_others["de"]
    assert not {t for v in ambiguous_others.values() for t in v} & {t for v in others.values() for t in v}
    rates = {}
    for name, cfg in (("before", LanguageConfig(**BEFORE)), ("now", LanguageConfig())):
        stage = LanguageId(cfg)
        kept = sum(_judge(stage, t)[2] is None for t in english) / len(english)
        dropped = [sum(_judge(stage, t)[2] is not None for t in v) / len(v) for v in others.values()]
        rates[name] = (kept, sum(dropped) / len(dropped))
    assert rates["now"][0] >= rates["before"][0] + 0.03, rates
    assert rates["now"][1] >= rates["before"][1], rates
