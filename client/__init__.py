"""lcmlive's browser pages (plain HTML, CSS and ES modules), shipped inside the package as data."""
