// clawden panel: the little script the pages need beyond htmx.
// Loaded from /static (the CSP allows no inline script). It never inserts
// text as HTML: streamed replies are added as text nodes.
"use strict";
