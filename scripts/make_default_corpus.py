#!/usr/bin/env python3
"""Writes data/default-corpus/{train,valid}.txt: the embedded default corpus the
quickstart pretrains on, generated (seeded) by this script, not collected from anywhere.

English-like text with structure a masked LM can learn and a reader can check:
fixed facts (each animal has one sound, colour, food and home; each town one river and
one trade), agreement (a/an, singular/plural verbs, he/she/they after a named person),
and short stories whose sentences refer back to their own characters. One sentence per
line; a blank line ends a document.

    python3 scripts/make_default_corpus.py
"""
import os
import random

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "data", "default-corpus")

ANIMALS = {
    # name: (plural, sound, colour, food, home)
    "cat": ("cats", "meows", "grey", "fish", "house"),
    "dog": ("dogs", "barks", "brown", "bones", "yard"),
    "cow": ("cows", "moos", "black", "grass", "barn"),
    "owl": ("owls", "hoots", "white", "mice", "tree"),
    "duck": ("ducks", "quacks", "yellow", "bread", "pond"),
    "horse": ("horses", "neighs", "chestnut", "hay", "stable"),
    "sheep": ("sheep", "bleats", "cream", "clover", "meadow"),
    "frog": ("frogs", "croaks", "green", "flies", "marsh"),
    "bee": ("bees", "buzzes", "golden", "nectar", "hive"),
    "fox": ("foxes", "yelps", "red", "berries", "den"),
    "goat": ("goats", "bleats", "spotted", "leaves", "hill"),
    "crow": ("crows", "caws", "dark", "seeds", "field"),
}
TOWNS = {
    # town: (river, trade, region)
    "Ashford": ("Tamble", "bread", "north"), "Brackley": ("Osse", "wool", "south"),
    "Calder": ("Wend", "glass", "east"), "Dunmore": ("Lyre", "salt", "west"),
    "Eastwick": ("Fenn", "cheese", "north"), "Farrow": ("Cale", "iron", "south"),
    "Glenmoor": ("Ashe", "honey", "east"), "Harlow": ("Brill", "rope", "west"),
    "Ivybridge": ("Dove", "paper", "north"), "Kestrel": ("Mourne", "timber", "south"),
}
PEOPLE = {
    "Anna": "she", "Ben": "he", "Clara": "she", "David": "he", "Elena": "she", "Felix": "he",
    "Grace": "she", "Henry": "he", "Iris": "she", "Jonas": "he", "Lena": "she", "Marco": "he",
    "Nora": "she", "Oscar": "he", "Paula": "she", "Ruben": "he", "Sofia": "she", "Tomas": "he",
}
JOBS = {"baker": "bakes bread", "smith": "shapes iron", "weaver": "weaves wool", "fisher": "catches fish",
        "teacher": "teaches children", "farmer": "grows wheat", "potter": "makes pots", "miller": "grinds grain"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
WEATHER = {"rain": "wet", "snow": "cold", "sun": "warm", "wind": "loud", "fog": "grey"}


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def obj(pron):
    return {"he": "him", "she": "her"}[pron]


def poss(pron):
    return {"he": "his", "she": "her"}[pron]


def fact(rng):
    a = rng.choice(list(ANIMALS))
    plural, sound, colour, food, home = ANIMALS[a]
    t = rng.choice(list(TOWNS))
    river, trade, region = TOWNS[t]
    n = rng.randrange(2, 10)
    return rng.choice([
        f"The {a} {sound} at night.",
        f"A {colour} {a} lives in the {home}.",
        f"{plural.capitalize()} like to eat {food}.",
        f"Every {a} needs {food} and a {home}.",
        f"The town of {t} lies on the river {river}.",
        f"{t} is known for its {trade}.",
        f"The people of {t} sell {trade} in the {region}.",
        f"{NUMBERS[n - 1].capitalize()} {plural if n > 1 else a} sleep in the {home}.",
        f"In the {region}, the river {river} runs past {t}.",
    ])


def story(rng):
    name = rng.choice(list(PEOPLE))
    pron = PEOPLE[name]
    job = rng.choice(list(JOBS))
    town = rng.choice(list(TOWNS))
    river, trade, region = TOWNS[town]
    a = rng.choice(list(ANIMALS))
    plural, sound, colour, food, home = ANIMALS[a]
    day = rng.randrange(7)
    weather = rng.choice(list(WEATHER))
    friend = rng.choice([p for p in PEOPLE if p != name])
    fpron = PEOPLE[friend]
    n = rng.randrange(2, 8)
    lines = [
        f"{name} is {article(job)} {job} in {town}.",
        f"Every day {pron} {JOBS[job]} near the river {river}.",
        f"On {DAYS[day]} {name} found {article(colour)} {colour} {a} by the {home}.",
        f"The {a} {sound} when {pron} gave it some {food}.",
        f"{pron.capitalize()} took the {a} home, and it followed {obj(pron)} all the way.",
        f"The next day was {DAYS[(day + 1) % 7]}, and the {weather} made the streets {WEATHER[weather]}.",
        f"{friend} came to see the {a}, and {fpron} laughed when it {sound}.",
        f"{name} told {friend} that {town} is known for its {trade}.",
        f"They counted {NUMBERS[n - 1]} {plural} on the way to the market.",
        f"At the end of the week, {name} kept the {a} and named it after {poss(pron)} town.",
    ]
    keep = sorted(rng.sample(range(1, len(lines)), rng.randrange(3, len(lines))))
    return [lines[0]] + [lines[i] for i in keep]


def document(rng):
    if rng.random() < 0.6:
        return story(rng)
    return [fact(rng) for _ in range(rng.randrange(3, 9))]


def write(path, docs, rng):
    with open(path, "w") as f:
        for i in range(docs):
            f.write("\n".join(document(rng)) + "\n\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    write(os.path.join(OUT, "train.txt"), 9000, random.Random(2019))
    write(os.path.join(OUT, "valid.txt"), 300, random.Random(7))
    with open(os.path.join(OUT, "SOURCE.txt"), "w") as f:
        f.write("Generated by scripts/make_default_corpus.py (seeded; no external text).\n")
    for name in ["train.txt", "valid.txt"]:
        print(name, os.path.getsize(os.path.join(OUT, name)), "bytes")


if __name__ == "__main__":
    main()
