"""Real NLI rows with their gold labels, for the labeling workload's tests."""

from typing import Any

NLI_ROWS: list[dict[str, Any]] = [
    {"premise": "A man in a blue shirt is playing an acoustic guitar on a street corner.",
     "hypothesis": "A person is making music outdoors.", "label": 0},
    {"premise": "Two children are building a sandcastle on the beach.",
     "hypothesis": "The children are sitting in a classroom.", "label": 2},
    {"premise": "A woman is reading a book on a crowded train.",
     "hypothesis": "The woman is going to work.", "label": 1},
    {"premise": "A chef slices vegetables in a busy restaurant kitchen.",
     "hypothesis": "Someone is preparing food.", "label": 0},
    {"premise": "An old dog sleeps next to the fireplace.",
     "hypothesis": "The dog is running through a field.", "label": 2},
    {"premise": "A cyclist in a yellow jersey climbs a steep mountain road.",
     "hypothesis": "The cyclist is in a race.", "label": 1},
    {"premise": "Three friends share a pizza at a small table.",
     "hypothesis": "People are eating.", "label": 0},
    {"premise": "A girl in a red coat waits at a snowy bus stop.",
     "hypothesis": "It is a hot summer afternoon.", "label": 2},
    {"premise": "A man repairs the engine of an old truck.",
     "hypothesis": "The truck belongs to the man.", "label": 1},
    {"premise": "A crowd watches fireworks over the river.",
     "hypothesis": "People are looking at the sky.", "label": 0},
    {"premise": "A toddler is splashing in a puddle wearing rain boots.",
     "hypothesis": "The toddler is asleep in bed.", "label": 2},
    {"premise": "A violinist performs on a stage under bright lights.",
     "hypothesis": "The violinist is famous.", "label": 1},
]
