#!/usr/bin/env python3
"""Regenerate the bundled regression slice in ``src/whisper_tune/evaluation/assets/regression/``.

The slice is the default guard-rail set (``eval.regression_set: bundled``): a fine-tune is evaluated on it
before and after, and the run warns when its WER rises. It is deliberately unlike a user's data:

* ``english.csv``: 12 English sentences about weather, travel and everyday errands, read by hibari-tts
  (voice "heart"): used for English-only models.
* ``multilingual.csv``: those 12 plus 4 sentences each in German, French, Spanish, Italian, Dutch and
  Portuguese read by espeak-ng (its voice for each language), 36 clips with a ``language`` column, so
  evaluation forces each row's language and language detection can be checked: used for multilingual
  models.

All sentences were written for this project and are released with it (MIT). Clips are mono Ogg Vorbis
at the synthesiser's own rate (the recipe resamples), deterministic (fixed seeds and Ogg serials).

Tools: ``apt-get install espeak-ng``, ``pip install hibari-tts soundfile numpy``. Maintainer tool; the
package never imports it. Usage: ``python scripts/make_regression_data.py``.
"""

from __future__ import annotations

import csv
import shutil
import sys
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "src" / "whisper_tune" / "evaluation" / "assets" / "regression"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_quickstart_data as qs  # noqa: E402  (shared trimming, synthesis and Ogg encoding)

ENGLISH = [
    "The train to the coast leaves every morning at half past eight.",
    "Please bring an umbrella because it will rain this afternoon.",
    "We bought fresh bread, cheese and apples at the market.",
    "The library closes early on Saturdays during the summer.",
    "Turn left at the bakery and the station is on your right.",
    "Strong winds are expected along the northern hills tonight.",
    "My neighbour repairs old bicycles in his garage.",
    "The museum has a new exhibition about ancient maps.",
    "Could you send me the invoice by the end of the week?",
    "The bridge was painted bright green last spring.",
    "Our flight was delayed by an hour because of fog.",
    "She plants tomatoes and beans in the garden every year.",
]
OTHER = {
    "de": [
        "Der Zug nach Hamburg hat heute zehn Minuten Verspätung.",
        "Im Sommer gehen wir gern am See spazieren.",
        "Kannst du mir bitte das Salz geben?",
        "Die Bibliothek ist am Sonntag geschlossen.",
    ],
    "fr": [
        "Le marché ouvre tous les samedis sur la place du village.",
        "Il fait très beau aujourd'hui sur la côte.",
        "Nous avons réservé une table pour ce soir.",
        "La gare se trouve au bout de cette rue.",
    ],
    "es": [
        "El autobús llega a la estación cada media hora.",
        "Mañana vamos a visitar a mis abuelos en el campo.",
        "La tienda de la esquina vende pan muy bueno.",
        "Hace mucho calor en la ciudad durante el verano.",
    ],
    "it": [
        "Il treno per Roma parte dal binario tre.",
        "Stasera mangiamo la pizza con i nostri amici.",
        "La biblioteca apre alle nove del mattino.",
        "In autunno le foglie diventano gialle e rosse.",
    ],
    "nl": [
        "De fiets staat achter het huis in de tuin.",
        "Morgen gaan we met de trein naar Amsterdam.",
        "De winkel is op zondag de hele dag dicht.",
        "Het regent al de hele week in de stad.",
    ],
    "pt": [
        "O comboio para Lisboa sai às nove horas.",
        "Hoje o mercado tem muitas frutas frescas.",
        "A praia fica perto do nosso hotel.",
        "Gostamos de caminhar no parque ao domingo.",
    ],
}


def espeak(text: str, voice: str) -> tuple[object, int]:
    qs.ESPEAK_VOICE = voice
    return qs.espeak(text)


def main() -> None:
    tmp = OUT.with_name(".regression.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "clips").mkdir(parents=True)
    hibari = qs.HibariVoice()
    rows: list[tuple[str, str, str]] = []
    clips = [(text, "en", hibari(text)) for text in ENGLISH]
    clips += [(text, lang, espeak(text, lang)) for lang, texts in OTHER.items() for text in texts]
    for i, (text, lang, (x, sr)) in enumerate(clips):
        name = f"clips/{lang}-{i:03d}.ogg"
        (tmp / name).write_bytes(qs.encode_ogg(x, sr, serial=zlib.crc32(name.encode())))  # type: ignore[arg-type]
        rows.append((name, text, lang))
    for file, subset in (("english.csv", [r for r in rows if r[2] == "en"]), ("multilingual.csv", rows)):
        with open(tmp / file, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["audio", "text", "language"])
            writer.writerows(subset)
    shutil.rmtree(OUT, ignore_errors=True)
    tmp.rename(OUT)
    print(f"wrote {len(rows)} clips to {OUT}")


if __name__ == "__main__":
    main()
