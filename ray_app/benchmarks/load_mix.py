"""The load test's request mix, shared by the locustfile and `prism bench serve`'s fusion profile.

Plain data (no locust import: importing locust monkey-patches threads with gevent).
"""

from __future__ import annotations

import os

SEARCHES = [
    "frog habitat", "where do tigers live", "planets of the solar system", "how rockets work", "coffee caffeine",
    "the Moon landing", "birds that cannot fly", "volcano eruption", "photosynthesis in plants", "ancient Rome",
    "World War II", "the human heart", "electricity and magnetism", "jazz music", "the Pacific Ocean",
    "dinosaurs extinction", "the Renaissance painters", "computer programming", "climate change", "the speed of light",
]
QUESTIONS = [
    "Where do frogs live?", "What is a tiger?", "How does a rocket fly in space?", "What is coffee made from?",
    "What is the Moon?", "Why do birds have feathers?", "What causes earthquakes?", "Who painted the Mona Lisa?",
    "What is photosynthesis?", "How does the heart pump blood?",
]
IMAGE_QUESTIONS = ["What is this?", "What is this and where does it live?", "What is in this picture?"]
MAX_NEW_TOKENS = int(os.environ.get("PRISM_LOAD_MAX_NEW_TOKENS", "48"))
