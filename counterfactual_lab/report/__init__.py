"""The report people read: HTML, charts, example images, sentences and terminal text."""
