"""synth-zh: a deterministic Mandarin ASR corpus: template sentences spoken by espeak-ng's pinyin voice.

Sentences are built from word lists (times, subjects, adverbs, places, verb-object pairs; about 200 distinct words),
e.g. 明天下午 我的朋友 想 在图书馆 看 书 -> text "明天下午我的朋友想在图书馆看书" (characters, no spaces).
Each word is converted to tone-numbered pinyin by pypinyin (Style.TONE3, neutral tone as 5; word by word, so a
polyphone is read as in its word, e.g. 银行 -> yin2 hang2) and spoken by `espeak-ng -v cmn-latn-pinyin` with one of
a few "speakers" (an espeak voice variant with its own speed and pitch).
A sentence's split is fixed by a hash of its text, so splits never share a sentence (test sentences are unseen in
train), whatever the sizes. Determinism: one random.Random seeded from the seed; espeak-ng itself is deterministic.
"""
from __future__ import annotations

import hashlib
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from steermoe.data.layout import RawItem, only_splits, prepare_corpus

CORPUS = "synth-zh"
DEFAULT_SIZES = {"train": 400, "dev": 40, "test": 80}

TIMES = ["今天", "明天", "昨天", "后天", "前天", "早上", "上午", "中午", "下午", "晚上", "周末", "每天", "现在",
         "刚才", "星期一", "星期三", "星期五", "星期天", "今年", "去年", "春天", "夏天", "秋天", "冬天"]
SUBJECTS = ["我", "你", "他", "她", "我们", "你们", "他们", "老师", "学生", "医生", "妈妈", "爸爸", "哥哥", "姐姐",
            "弟弟", "妹妹", "爷爷", "奶奶", "我的朋友", "同学们", "经理", "司机", "孩子们", "邻居", "警察", "小王",
            "李先生", "张老师"]
ADVERBS = ["也", "常常", "经常", "喜欢", "想", "要", "会", "不想", "打算", "准备", "一定要", "很少"]
PLACES = ["家里", "学校", "公园", "图书馆", "医院", "饭店", "超市", "公司", "商店", "教室", "厨房", "火车站", "机场",
          "银行", "办公室", "咖啡馆", "操场", "书店", "北京", "上海", "花园", "动物园", "电影院", "宿舍", "海边",
          "体育馆"]
VERB_OBJECTS = {
    "看": ["书", "电影", "报纸", "电视", "杂志", "比赛"],
    "吃": ["米饭", "面条", "饺子", "苹果", "包子", "水果", "蛋糕", "早饭", "午饭", "晚饭"],
    "喝": ["茶", "咖啡", "牛奶", "果汁", "水", "啤酒"],
    "买": ["衣服", "鞋子", "水果", "蔬菜", "词典", "礼物", "自行车", "车票", "报纸", "铅笔"],
    "写": ["信", "作业", "日记", "汉字", "报告", "文章"],
    "学习": ["中文", "数学", "历史", "音乐", "英语", "地理", "化学", "物理"],
    "打": ["电话", "篮球", "网球", "乒乓球"],
    "听": ["音乐", "广播", "故事", "新闻"],
    "做": ["作业", "饭", "运动", "蛋糕", "实验"],
    "洗": ["衣服", "碗", "车", "水果", "手"],
    "画": ["画", "地图", "小猫", "风景"],
    "踢": ["足球"],
    "唱": ["歌", "京剧"],
    "开": ["会", "车"],
    "等": ["公共汽车", "出租车", "朋友", "电梯"],
    "找": ["钥匙", "手机", "工作", "老师"],
    "复习": ["课文", "生词", "语法"],
    "准备": ["考试", "晚饭", "行李"],
}


@dataclass(frozen=True)
class Speaker:
    name: str
    variant: str  # espeak-ng voice variant
    speed: int  # espeak -s, words (here: syllables) per minute
    pitch: int  # espeak -p, 0-99


SPEAKERS = [Speaker("espeak-m1", "m1", 150, 45), Speaker("espeak-m3", "m3", 170, 30),
            Speaker("espeak-m7", "m7", 135, 55), Speaker("espeak-f2", "f2", 145, 65),
            Speaker("espeak-f4", "f4", 165, 75), Speaker("espeak-f5", "f5", 125, 60)]


@dataclass(frozen=True)
class ZhExample:
    id: str
    words: tuple[str, ...]
    speaker: Speaker

    @property
    def text(self) -> str:
        return "".join(self.words)

    @property
    def pinyin(self) -> str:
        from pypinyin import Style, lazy_pinyin

        return " ".join(syllable for word in self.words
                        for syllable in lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True))


def vocabulary() -> set[str]:
    """Every distinct word the templates can use (place words counted without their 在)."""
    return set(TIMES) | set(SUBJECTS) | set(ADVERBS) | set(PLACES) | set(VERB_OBJECTS) | {
        obj for objects in VERB_OBJECTS.values() for obj in objects}


def make_sentence(rng: random.Random) -> tuple[str, ...]:
    """[time] subject [adverb] [在 place] verb object, the time sometimes after the subject; as a word sequence."""
    subject = [rng.choice(SUBJECTS)]
    time = [rng.choice(TIMES)] if rng.random() < 0.7 else []
    adverb = [rng.choice(ADVERBS)] if rng.random() < 0.5 else []
    place = ["在", rng.choice(PLACES)] if rng.random() < 0.7 else []
    verb = rng.choice(sorted(VERB_OBJECTS))
    head = time + subject if rng.random() < 0.6 else subject + time
    return tuple(head + adverb + place + [verb, rng.choice(VERB_OBJECTS[verb])])


def _split_of(text: str, split_names: list[str]) -> str:
    """The one split a sentence may appear in: a stable hash of its text, independent of the sizes asked for."""
    return split_names[hashlib.sha256(text.encode()).digest()[0] % len(split_names)]


def plan_splits(sizes: dict[str, int], seed: int = 0) -> dict[str, list[ZhExample]]:
    """Distinct sentences (none shared between splits) and their speakers for every split; no audio."""
    rng = random.Random(f"{CORPUS}/{seed}")  # a str seed is hashed with sha512: stable across runs
    split_names = sorted(sizes)
    planned = {split: [] for split in sizes}
    seen = set()
    while any(len(planned[split]) < size for split, size in sizes.items()):
        words = make_sentence(rng)
        speaker = rng.choice(SPEAKERS)
        text = "".join(words)
        split = _split_of(text, split_names)
        if text in seen or len(planned[split]) >= sizes[split]:
            continue
        seen.add(text)
        planned[split].append(ZhExample(f"zh-{split}-{len(planned[split]):06d}", words, speaker))
    return planned


def speak(pinyin: str, speaker: Speaker) -> bytes:
    """Tone-numbered pinyin -> WAV bytes (22.05 kHz mono, as espeak-ng writes them; preparation resamples)."""
    command = ["espeak-ng", "-v", f"cmn-latn-pinyin+{speaker.variant}", "-s", str(speaker.speed),
               "-p", str(speaker.pitch), "--stdout", pinyin]
    return subprocess.run(command, capture_output=True, check=True).stdout


def targets(sizes: dict[str, int], seed: int) -> dict[str, list[str]]:
    return {split: [example.text for example in examples] for split, examples in plan_splits(sizes, seed).items()}


def build_synth_zh(out_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 0,
                   workers: int | None = None, progress: bool = True, only: list[str] | None = None) -> dict:
    """Speak and prepare every split (or the `only` ones, as a full build would) into out_dir (the common
    layout); returns the manifest."""
    splits = {}
    with ThreadPoolExecutor(workers or 2) as pool:  # threads suffice: the work is in the espeak-ng processes
        for split, examples in only_splits(plan_splits(sizes or DEFAULT_SIZES, seed), only).items():
            pinyins = [example.pinyin for example in examples]  # in this thread: pypinyin's caches are not shared
            audios = pool.map(speak, pinyins, [example.speaker for example in examples])
            splits[split] = [RawItem(id=example.id, audio=audio, text=example.text, source=f"{CORPUS} seed {seed}",
                                     speaker=example.speaker.name, language="zh")
                             for example, audio in zip(examples, audios)]
    return prepare_corpus(CORPUS, splits, out_dir, workers=workers, progress=progress)
