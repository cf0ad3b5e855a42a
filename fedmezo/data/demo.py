"""A built-in instruction dataset with short, checkable answers: the demo runs with no download.

Each category is a task a 135M instruct model can learn with a handful of MeZO rounds and whose answer
(one to three tokens, a number or a word) can be scored by exact match. Categories give the partitioner
a natural non-IID split. Every instruction is unique, and train and eval share none of them.
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Callable

from fedmezo.data.records import Example

__all__ = ["DEMO_CATEGORIES", "DEMO_EVAL_FRACTION", "generate_demo_dataset"]

DEMO_EVAL_FRACTION = 0.1  # share of each category held out for evaluation

# fmt: off
_WORDS = (
    "apple", "table", "chair", "river", "house", "green", "water", "bread", "light", "music",
    "plant", "stone", "cloud", "horse", "tiger", "lemon", "grape", "mango", "melon", "peach",
    "candle", "window", "garden", "forest", "planet", "rocket", "butter", "pencil", "paper", "guitar",
    "silver", "orange", "purple", "yellow", "winter", "summer", "spring", "autumn", "monday", "friday",
    "dog", "cat", "sun", "car", "box", "cup", "hat", "pen", "map", "bus",
    "book", "tree", "fish", "bird", "moon", "star", "rain", "snow", "wind", "fire",
    "milk", "rice", "salt", "door", "ship", "lamp", "ring", "sock", "shoe", "coat",
    "bottle", "basket", "bridge", "castle", "desert", "dragon", "engine", "farmer", "flower", "friend",
    "hammer", "island", "jacket", "jungle", "kitten", "ladder", "magnet", "market", "mirror", "monkey",
    "needle", "number", "office", "parrot", "pepper", "pillow", "pocket", "rabbit", "shadow", "spider",
    "sugar", "tomato", "turtle", "violin", "wallet", "yogurt", "zipper", "anchor", "barrel", "camera",
    "dinner", "doctor", "eagle", "feather", "frog", "ghost", "honey", "iron", "jelly", "kite",
    "lion", "mouse", "nest", "ocean", "piano", "queen", "robot", "sheep", "train", "uncle",
    "valley", "whale", "zebra", "acorn", "beach", "cabin", "daisy", "earth", "fence", "glove",
    "heart", "igloo", "jewel", "koala", "lemur", "metal", "noodle", "olive", "panda", "quilt",
    "radio", "salad", "tulip", "umbrella", "vase", "wheat", "yacht", "bacon", "cherry", "donkey",
    "elbow", "falcon", "goat", "helmet", "insect", "jaguar", "kettle", "lizard", "muffin", "napkin",
    "oyster", "pirate", "sailor", "saddle", "tunnel", "vacuum", "walnut", "basil", "cotton", "dollar",
    "finger", "gravel", "harbor", "insist", "juggle", "kernel", "listen", "marble", "nickel", "oxygen",
    "puzzle", "rescue", "silent", "throat", "unfold", "velvet", "wonder", "almond", "bucket", "cactus",
    "dentist", "gift", "hotel", "ink", "joke", "king", "leaf", "nose", "owl", "pig",
    "road", "sand", "tent", "van", "wolf", "yard", "zoo", "bell", "cake", "drum",
)
# fmt: on

# Country (as written in a sentence) → capital; ASCII spellings so answers compare byte for byte.
_CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin", "Hungary": "Budapest",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Peru": "Lima", "Chile": "Santiago",
    "Argentina": "Buenos Aires", "Kenya": "Nairobi", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Indonesia": "Jakarta", "India": "New Delhi", "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad",
    "Cuba": "Havana", "Belgium": "Brussels", "the Netherlands": "Amsterdam", "Switzerland": "Bern",
    "Australia": "Canberra", "South Korea": "Seoul", "the Philippines": "Manila", "Colombia": "Bogota",
    "Ukraine": "Kyiv", "Nigeria": "Abuja", "Morocco": "Rabat", "the Czech Republic": "Prague",
    "the United Kingdom": "London", "Romania": "Bucharest", "Brazil": "Brasilia",
}  # fmt: skip

_Pair = tuple[str, str]  # (instruction, answer)


def _arithmetic(rng: random.Random) -> list[_Pair]:
    """Two-digit sums and (non-negative) differences: 900 of the ~12,000 possible."""
    pairs = [(f"What is {a} + {b}?", str(a + b)) for a in range(10, 100) for b in range(10, 100)]
    pairs += [(f"What is {a} - {b}?", str(a - b)) for a in range(10, 100) for b in range(10, a)]
    rng.shuffle(pairs)
    return pairs[:900]


def _comparison(rng: random.Random) -> list[_Pair]:
    pairs = [
        (f"Which number is {word}: {a} or {b}?", str(pick(a, b)))
        for word, pick in (("larger", max), ("smaller", min))
        for a in range(1, 100)
        for b in range(1, 100)
        if a != b
    ]
    rng.shuffle(pairs)
    return pairs[:700]


def _reverse(rng: random.Random) -> list[_Pair]:
    return [(f"Reverse the word '{w}'.", w[::-1]) for w in _WORDS]


def _uppercase(rng: random.Random) -> list[_Pair]:
    return [(f"Write the word '{w}' in uppercase letters.", w.upper()) for w in _WORDS]


def _count_letters(rng: random.Random) -> list[_Pair]:
    return [(f"How many letters are in the word '{w}'?", str(len(w))) for w in _WORDS]


def _capital_of(rng: random.Random) -> list[_Pair]:
    return [
        (template.format(country=country), capital)
        for country, capital in _CAPITALS.items()
        for template in ("What is the capital of {country}?", "Which city is the capital of {country}?")
    ]


def _next_letter(rng: random.Random) -> list[_Pair]:
    neighbours = list(itertools.pairwise(string.ascii_lowercase))
    return [(f"Which letter comes right after '{a}' in the alphabet?", b) for a, b in neighbours] + [
        (f"Which letter comes right before '{b}' in the alphabet?", a) for a, b in neighbours
    ]


_GENERATORS: dict[str, Callable[[random.Random], list[_Pair]]] = {
    "arithmetic": _arithmetic,
    "capital-of": _capital_of,
    "comparison": _comparison,
    "count-letters": _count_letters,
    "next-letter": _next_letter,
    "reverse": _reverse,
    "uppercase": _uppercase,
}
DEMO_CATEGORIES = tuple(sorted(_GENERATORS))


def generate_demo_dataset(seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, eval): ~2,150 and ~240 examples over 7 categories, the same for the same seed.

    Each category's unique instructions are shuffled and DEMO_EVAL_FRACTION of them held out, so eval
    covers every category and no eval instruction appears in train. Train is then shuffled across
    categories, so a file prefix is a fair sample.
    """
    rng = random.Random(seed)  # Python's shuffle algorithm is stable across versions and platforms
    train: list[Example] = []
    held_out: list[Example] = []
    for category in DEMO_CATEGORIES:
        pairs = list(dict.fromkeys(_GENERATORS[category](rng)))  # dedupe, keeping order
        rng.shuffle(pairs)
        num_eval = max(1, round(len(pairs) * DEMO_EVAL_FRACTION))
        examples = [Example(instruction=q, input="", output=a, category=category) for q, a in pairs]
        held_out += examples[:num_eval]
        train += examples[num_eval:]
    rng.shuffle(train)
    return train, held_out
