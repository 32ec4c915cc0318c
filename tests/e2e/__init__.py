"""End-to-end harness: a real nginx and headless Chromium running TF.js.

``webserver`` runs nginx on a throwaway config; ``browser`` drives Chromium on the
pages in this folder and compares what TF.js loaded. The pages (``*.html``,
``*.js``) are served to the browser by ``browser.Collector``.
"""
