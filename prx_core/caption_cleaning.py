"""Caption cleaning before tokenising, as PRX's text tower does it (``[text] clean``).

``"deepfloyd"`` is the cleaning DeepFloyd IF introduced for T5 captions and PRX applies to every
caption before T5Gemma sees it (Photoroom/PRX ``models/text_tower.py``, ``TextTower.clean_text``):
lower-case; drop URLs, @handles, CJK runs, HTML entities, IP addresses, long numbers, file names
and shop spam; unify dashes and quotes; turn stray punctuation into spaces; repair mojibake with
``ftfy``; squeeze whitespace. The steps below follow PRX's order, since later rules see the output
of earlier ones. ``"none"`` passes captions through unchanged.

diffusers' ``PRXPipeline`` carries a copy of the same rules whose quote-unifying patterns lost the
curly quotes (it leaves “ ” ‘ ’ in place); this module follows PRX's training code.
"""
from __future__ import annotations

import html
import re
import urllib.parse

import ftfy

CLEANERS = ("deepfloyd", "none")

_URL = re.compile(
    r"\b((?:https?|www):(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@))"
)
_CJK_BLOCKS = ("\u31c0-\u31ef", "\u31f0-\u31ff", "\u3200-\u32ff", "\u3300-\u33ff", "\u3400-\u4dbf",
               "\u4dc0-\u4dff", "\u4e00-\u9fff")
_DASHES = ("\u002d\u058a\u05be\u1400\u1806\u2010-\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40\u301c\u3030\u30a0"
           "\ufe31\ufe32\ufe58\ufe63\uff0d")
_STRAY_PUNCTUATION = re.compile(r"[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\\/\*]{1,}")
_SEPARATORS = re.compile(r"(?:\-|\_)")
_FILE_EXTENSIONS = "png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4"

# (pattern, replacement) in PRX's order; the stray-punctuation and separator steps sit between.
_BEFORE_PUNCTUATION = [
    (_URL, ""),
    (r"@[\w\d]+\b", ""),
    *((f"[{block}]+", "") for block in _CJK_BLOCKS),
    (f"[{_DASHES}]+", "-"),
    ("[`´«»“”¨]", '"'),
    ("[‘’]", "'"),
    (r"&quot;?", ""),
    (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # IP addresses
    (r"\d:\d\d\s+$", ""),  # article ids
    (r"\\n", " "),
    (r"#\d{1,3}\b", ""),
    (r"#\d{5,}\b", ""),
    (r"\b\d{6,}\b", ""),
    (rf"[\S]+\.(?:{_FILE_EXTENSIONS})", ""),
    (r"[\"\']{2,}", r'"'),
    (r"[\.]{2,}", r" "),
]
_AFTER_FTFY = [
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),  # jc6640
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),  # jc6640vc
    (r"\b\d+[a-zA-Z]+\d+\b", ""),  # 6640vc231
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (rf"\b(?:{_FILE_EXTENSIONS})(\simage[s]?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", r" "),  # j2d1a2a...
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),  # sizes such as 1920x1080
    (r"\b\s+\:\s+", r": "),
    (r"(\D[,\./])\b", r"\1 "),
    (r"\s+", " "),
    (r"^[\"\']([\w\W]+)[\"\']$", r"\1"),
    (r"^[\'\_,\-\:;]", r""),
    (r"[\'\_,\-\:\-\+]$", r""),
    (r"^\.\S+$", ""),
]


def _apply(text: str, rules) -> str:
    for pattern, replacement in rules:
        text = re.sub(pattern, replacement, text)
    return text


def basic_clean(text: str) -> str:
    """Repair mojibake (ftfy), unescape HTML twice, strip."""
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def deepfloyd_clean(caption: str) -> str:
    """PRX's caption cleaning (see the module docstring)."""
    text = urllib.parse.unquote_plus(str(caption)).strip().lower()
    text = re.sub("<person>", "person", text)
    text = _apply(text, _BEFORE_PUNCTUATION)
    text = _STRAY_PUNCTUATION.sub(" ", text)
    text = re.sub(r"\s+\.\s+", r" ", text)
    if len(_SEPARATORS.findall(text)) > 3:  # this-is-my-cute-cat / this_is_my_cute_cat
        text = _SEPARATORS.sub(" ", text)
    text = _apply(basic_clean(text), _AFTER_FTFY)
    return text.strip()


def clean_captions(captions: list[str], cleaner: str) -> list[str]:
    """``captions`` cleaned by ``cleaner`` (one of :data:`CLEANERS`)."""
    if cleaner == "none":
        return list(captions)
    if cleaner == "deepfloyd":
        return [deepfloyd_clean(c) for c in captions]
    raise ValueError(f"unknown caption cleaner {cleaner!r}: one of {CLEANERS}")
