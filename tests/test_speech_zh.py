"""speech-zh: Chinese clauses spoken as pinyin, sources large enough, about a syllable per character (what speech-en
and speech-zh share: tests/test_speech_corpora.py)."""
from pypinyin import lazy_pinyin

from steermoe.data.layout import read_split
from steermoe.data.speech_zh import CORPUS, DEFAULT_SIZES, SPLITS, build_speech_zh, normalise, plan


def test_a_clause_is_spoken_as_pinyin_with_its_pauses_and_its_target_is_the_characters():
    sentence = normalise("“有田不耕仓廪虚，有书不读子孙愚。”")
    assert sentence.text == "有田不耕仓廪虚有书不读子孙愚"
    assert sentence.spoken == "you3 tian2 bu4 geng1 cang1 lin3 xu1, you3 shu1 bu4 du2 zi3 sun1 yu2."
    assert normalise("我去银行取钱。").spoken == "wo3 qu4 yin2 hang2 qu3 qian2."  # a polyphone read as in its phrase


def test_clauses_with_digits_latin_letters_or_a_bad_length_are_dropped():
    assert normalise("使用 bash 命令运行这个程序。") is None
    assert normalise("第3章讲的是这个问题。") is None
    assert normalise("不怕慢。") is None  # 3 characters
    assert normalise("天" * 31 + "。") is None
    assert normalise("天" * 30 + "。").text == "天" * 30


def test_the_sources_give_thousands_of_sentences_and_characters():
    pools = CORPUS.pools()
    assert min(len(pools[split]) for split in SPLITS) >= 500
    assert len({c for s in pools["train"] for c in s.text}) >= 3000  # measured 5,390
    train = plan(DEFAULT_SIZES, seed=0, pools=pools)["train"]
    assert len({u.sentence.section for u in train}) >= 1000  # many fortunes, not a few long ones


def test_the_voices_read_about_a_syllable_per_character(tmp_path):
    sizes = {"train": 8, "test-ood": 8}
    build_speech_zh(tmp_path, sizes, seed=3, workers=2, progress=False)
    for split in sizes:
        for row in read_split(tmp_path, split).to_pylist():
            # espeak-ng reads 125-180 syllables a minute (0.33-0.48 s each) plus pauses, training audio 10 % faster
            # or slower; pinyin read letter by letter, or audio at a wrong sample rate, is far outside 0.2-0.8 s
            seconds_per_syllable = row["duration"] / len(lazy_pinyin(row["text"]))
            assert 0.2 <= seconds_per_syllable <= 0.8, (split, row["text"], seconds_per_syllable)
