"""``featurebeam report``: one self-contained HTML page about a feature set. ``scan.py`` reads the set and a model
directory into counts and bounded samples; ``neighbours.py`` finds similar records, ``thumbnails.py`` previews them
(recordings: ``audio_previews.py``, drawn by ``spectrograms.py``), ``plots.py`` draws the figures and ``markup.py``
holds the HTML pieces from which ``feature_set_sections.py`` and ``model_sections.py`` write the sections;
``page.py`` assembles the page (``build_report``) and ``command.py`` is the command that writes it.
"""
