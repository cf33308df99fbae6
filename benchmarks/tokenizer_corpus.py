"""A few MB of mixed text for tokenizer benchmarks, built deterministically from what is installed.

English prose: Python's own documentation (pydoc topics) and installed packages' READMEs.
Source code: modules of the standard library. Other languages: sentences in a dozen scripts
whose words are reshuffled by a seeded generator, with numbers and emoji mixed in. Nothing is
downloaded; the same installation gives the same corpus.
"""

from __future__ import annotations

import importlib.metadata
import random
import sysconfig
from pathlib import Path

SENTENCES = {
    "fr": "Le renard brun rapide saute par-dessus le chien paresseux. Nous avons mangé à midi près de la gare, "
    "puis nous sommes allés voir l'exposition qu'on nous avait recommandée.",
    "de": "Die schnelle braune Füchsin springt über den faulen Hund. Straßenbahnhaltestellen sind in Größe und "
    "Ausstattung sehr unterschiedlich, aber meistens pünktlich.",
    "es": "El veloz murciélago hindú comía feliz cardillo y kiwi. ¿Dónde está la biblioteca? ¡Qué día tan bonito!",
    "ru": "Съешь же ещё этих мягких французских булок, да выпей чаю. Москва — столица России, город на реке.",
    "el": "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Η Αθήνα είναι η πρωτεύουσα της Ελλάδας και μια αρχαία πόλη.",
    "zh": "我们今天去公园散步，天气很好。机器学习是人工智能的一个分支，它使用数据来训练模型。",
    "ja": "いろはにほへと ちりぬるを。東京は日本の首都であり、多くの人々が毎日電車で通勤しています。",
    "ko": "다람쥐 헌 쳇바퀴에 타고파. 서울은 대한민국의 수도이며 한강이 도시를 가로지릅니다.",
    "ar": "نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر. القاهرة هي عاصمة مصر.",
    "he": "דג סקרן שט בים מאוכזב ולפתע מצא חברה. ירושלים היא עיר עתיקה.",
    "hi": "ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले विष्णुवतार भगवान श्रीराम।",
    "th": "เป็นมนุษย์สุดประเสริฐเลิศคุณค่า กว่าบรรดาฝูงสัตว์เดรัจฉาน",
    "vi": "Tiếng Việt có dấu: Hà Nội là thủ đô của Việt Nam, nổi tiếng với phở và cà phê.",
    "tr": "Pijamalı hasta yağız şoföre çabucak güvendi. İstanbul büyük bir şehirdir.",
}
EXTRAS = ["🙂", "🚀", "👨\u200d👩\u200d👧", "👍🏽", "🇯🇵", "12", "2024", "3.14159", "١٢٣", "—", "…", "«", "»", "\n"]


def prose(limit: int) -> list[str]:
    import pydoc_data.topics

    docs = [text for _, text in sorted(pydoc_data.topics.topics.items())]
    for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"] or ""):
        if dist.metadata["Name"] != "fastllm":  # our own README changes with every edit
            docs.append(dist.metadata.get_payload() or "")
    return _take([d for d in docs if d.strip()], limit)


def source_code(limit: int) -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if not p.name.startswith("_"))
    return _take([p.read_text(encoding="utf-8", errors="replace") for p in files], limit)


UNSPACED = {"zh", "ja", "th"}  # scripts written without spaces between words


def multilingual(limit: int, rng: random.Random) -> list[str]:
    """Reshuffled words (for unspaced scripts: runs of 1-4 characters) of each language's sentences."""
    docs, size = [], 0
    while size < limit:
        language = rng.choice(sorted(SENTENCES))
        sentence = SENTENCES[language]
        if language in UNSPACED:
            cuts = sorted(rng.sample(range(1, len(sentence)), len(sentence) // 3))
            words, separator = [sentence[a:b] for a, b in zip([0, *cuts], [*cuts, len(sentence)])], ""
        else:
            words, separator = sentence.split(" "), " "
        text = separator.join(rng.choice(words) if rng.random() > 0.05 else rng.choice(EXTRAS) for _ in range(300))
        docs.append(text)
        size += len(text.encode())
    return docs


def build_corpus(megabytes: float = 4.0, seed: int = 0) -> list[str]:
    """Documents (a few KB each) mixing prose (45%), code (35%) and other languages (20%)."""
    total = int(megabytes * 1e6)
    rng = random.Random(seed)
    docs = prose(int(total * 0.45)) + source_code(int(total * 0.35)) + multilingual(int(total * 0.2), rng)
    # Split long documents so that batches balance, then interleave the kinds of text.
    pieces = [doc[i : i + 8000] for doc in docs for i in range(0, len(doc), 8000)]
    rng.shuffle(pieces)
    return [_without_control_characters(p) for p in pieces]


def _take(docs: list[str], limit: int) -> list[str]:
    out, size = [], 0
    for doc in docs:
        if size >= limit:
            break
        out.append(doc)
        size += len(doc.encode())
    return out


def _without_control_characters(text: str) -> str:
    # Control characters other than \t \n \r have no token in some vocabularies (tiktoken fails on them).
    return "".join(c for c in text if c >= " " or c in "\t\n\r")
