"""``whisper-tune export``: a run or model -> merged Hugging Face and CTranslate2 models, parity-checked.

``hf`` writes the merged Hugging Face directory, ``ct2`` converts it with ctranslate2's own converter,
``parity`` decodes the same eval clips with the source and the exported model and compares WERs,
``runner`` ties them together and writes ``export.json``. See docs/export.md.
"""
