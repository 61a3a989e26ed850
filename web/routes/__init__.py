"""One router per page or concern; ``web/app.py`` includes them all."""
