"""Transcript normalization, as configured per dataset."""

import pytest

from speechkit.config import Digits, TextConfig
from speechkit.data.text import TextNormalizer

FLEURS_LIKE = TextConfig(lowercase=True, unidecode=True, digits=Digits.remove)


@pytest.mark.parametrize("raw,expected", [
    ("¿Dónde está el niño?", "donde esta el nino"),
    ("La canción, ¡qué bonita!", "la cancion que bonita"),
    ("Árbol  PEQUEÑO…", "arbol pequeno"),
    ("En 1995 había 3 gatos.", "en habia gatos"),
    ("«Sí», dijo él — y se fue.", "si dijo el y se fue"),
])
def test_spanish_as_the_fleurs_recipe(raw, expected):
    assert TextNormalizer(FLEURS_LIKE)(raw).text == expected


def test_accents_kept_without_unidecode():
    assert TextNormalizer(TextConfig(unidecode=False))("Canción Ñandú").text == "canción ñandú"


def test_english_apostrophes_survive_default_punctuation():
    assert TextNormalizer(TextConfig())("Don't STOP, it's fine!").text == "don't stop it's fine"


def test_digits_kept_by_default():
    assert TextNormalizer(TextConfig())("Room 101").text == "room 101"


def test_digits_can_drop_the_example():
    out = TextNormalizer(TextConfig(digits=Digits.drop_example))("Room 101")
    assert out.reason == "digits_in_text"


@pytest.mark.parametrize("raw", ["", None, "   ", "?!...", "123"])
def test_empty_after_normalization_is_flagged(raw):
    norm = TextNormalizer(FLEURS_LIKE)(raw)
    assert norm.text == "" and norm.reason == "empty_transcript"


def test_custom_ignore_regex_and_no_lowercase():
    cfg = TextConfig(lowercase=False, chars_to_ignore=r"[xX]")
    assert TextNormalizer(cfg)("XaXbX Hi").text == "ab Hi"
