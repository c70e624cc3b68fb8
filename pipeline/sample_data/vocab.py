"""English vocabulary of the scenes: colours, shapes, sizes, positions, textures, words, boilerplate."""

from __future__ import annotations

# colour id -> (RGB, English names). Ids double as the keys of the translations in captions_i18n.json.
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "red": ((214, 32, 39), ("red",)),
    "crimson": ((175, 18, 52), ("crimson",)),
    "scarlet": ((250, 45, 10), ("scarlet",)),
    "maroon": ((120, 10, 20), ("maroon",)),
    "pink": ((250, 150, 190), ("pink",)),
    "hot_pink": ((245, 70, 165), ("hot pink",)),
    "magenta": ((220, 0, 200), ("magenta",)),
    "salmon": ((250, 128, 114), ("salmon",)),
    "coral": ((255, 120, 80), ("coral",)),
    "orange": ((250, 135, 0), ("orange",)),
    "amber": ((255, 190, 0), ("amber",)),
    "gold": ((225, 180, 30), ("gold", "golden")),
    "yellow": ((250, 230, 40), ("yellow",)),
    "beige": ((230, 215, 180), ("beige",)),
    "tan": ((205, 170, 125), ("tan",)),
    "brown": ((135, 75, 30), ("brown",)),
    "chocolate": ((95, 50, 20), ("chocolate", "dark brown")),
    "olive": ((120, 125, 10), ("olive",)),
    "lime": ((150, 230, 30), ("lime", "lime green")),
    "green": ((30, 150, 50), ("green",)),
    "dark_green": ((10, 80, 30), ("dark green", "forest green")),
    "emerald": ((0, 160, 105), ("emerald",)),
    "mint": ((160, 240, 195), ("mint", "mint green")),
    "teal": ((0, 125, 125), ("teal",)),
    "turquoise": ((60, 220, 205), ("turquoise",)),
    "cyan": ((0, 215, 235), ("cyan",)),
    "sky_blue": ((120, 190, 240), ("sky blue", "light blue")),
    "blue": ((30, 70, 220), ("blue",)),
    "cobalt": ((0, 70, 170), ("cobalt", "cobalt blue")),
    "navy": ((10, 15, 100), ("navy", "navy blue")),
    "indigo": ((75, 0, 130), ("indigo",)),
    "violet": ((145, 85, 225), ("violet",)),
    "purple": ((115, 35, 160), ("purple",)),
    "lavender": ((200, 175, 240), ("lavender",)),
    "plum": ((140, 65, 130), ("plum",)),
    "grey": ((128, 128, 128), ("grey", "gray")),
    "silver": ((195, 195, 200), ("silver", "light grey")),
    "charcoal": ((55, 65, 75), ("charcoal", "dark grey")),
    "black": ((15, 15, 15), ("black",)),
    "white": ((250, 250, 250), ("white",)),
    "cream": ((255, 248, 215), ("cream",)),
}

# The colours and shapes every language in captions_i18n.json translates.
BASIC_COLOURS: tuple[str, ...] = (
    "red", "blue", "green", "yellow", "black", "white", "grey", "brown", "orange", "purple", "pink",
)
BASIC_SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "hexagon", "rectangle", "ellipse", "diamond",
)

# shape id -> (singular names, plural names); index i of one matches index i of the other.
SHAPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "circle": (("circle", "disc"), ("circles", "discs")),
    "square": (("square",), ("squares",)),
    "triangle": (("triangle",), ("triangles",)),
    "star": (("star",), ("stars",)),
    "hexagon": (("hexagon",), ("hexagons",)),
    "pentagon": (("pentagon",), ("pentagons",)),
    "octagon": (("octagon",), ("octagons",)),
    "rectangle": (("rectangle", "bar"), ("rectangles", "bars")),
    "ellipse": (("ellipse", "oval"), ("ellipses", "ovals")),
    "diamond": (("diamond", "rhombus"), ("diamonds", "rhombuses")),
    "heart": (("heart",), ("hearts",)),
    "cross": (("cross", "plus sign"), ("crosses", "plus signs")),
    "ring": (("ring",), ("rings",)),
    "crescent": (("crescent", "crescent moon"), ("crescents", "crescent moons")),
}

# size id -> (fraction of the image's shorter side, English words; "" leaves the size unsaid)
SIZES: dict[str, tuple[tuple[float, float], tuple[str, ...]]] = {
    "tiny": ((0.10, 0.14), ("tiny",)),
    "small": ((0.17, 0.22), ("small", "little")),
    "medium": ((0.25, 0.31), ("", "", "medium")),
    "large": ((0.36, 0.44), ("large", "big")),
    "huge": ((0.52, 0.62), ("huge", "giant")),
}
GROUP_SIZES: tuple[str, ...] = ("tiny", "small")  # sizes of shapes drawn in groups of 2 or 3
MULTI_OBJECT_SIZES: tuple[str, ...] = ("tiny", "small", "medium", "medium")
SINGLE_OBJECT_SIZES: tuple[str, ...] = ("small", "medium", "medium", "large", "large", "huge")

# texture id -> English words ("" leaves it unsaid); weights in TEXTURE_WEIGHTS
TEXTURES: dict[str, tuple[str, ...]] = {
    "solid": ("", "", "", "solid"),
    "striped": ("striped",),
    "dotted": ("dotted", "spotted", "polka dot"),
    "outlined": ("outlined", "hollow"),
}
TEXTURE_WEIGHTS: dict[str, float] = {"solid": 0.7, "striped": 0.1, "dotted": 0.1, "outlined": 0.1}

# 3x3 grid cells: id -> (column, row, English phrases)
CELLS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "top_left": (0, 0, ("in the top left", "in the top left corner", "in the upper left", "at the top left")),
    "top": (1, 0, ("at the top", "near the top", "at the top centre", "along the top")),
    "top_right": (2, 0, ("in the top right", "in the top right corner", "in the upper right",
                         "at the top right")),
    "left": (0, 1, ("on the left", "on the left side", "at the left")),
    "centre": (1, 1, ("in the centre", "in the center", "in the middle")),
    "right": (2, 1, ("on the right", "on the right side", "at the right")),
    "bottom_left": (0, 2, ("in the bottom left", "in the bottom left corner", "in the lower left",
                           "at the bottom left")),
    "bottom": (1, 2, ("at the bottom", "near the bottom", "at the bottom centre", "along the bottom")),
    "bottom_right": (2, 2, ("in the bottom right", "in the bottom right corner", "in the lower right",
                            "at the bottom right")),
}
TEXT_CELLS: tuple[str, ...] = ("top", "centre", "bottom")

COUNT_WORDS: dict[int, tuple[str, ...]] = {2: ("two", "a pair of"), 3: ("three",)}

# Translated words that read as everyday English ("Triangle orange", "rectangle rose"): a non-English
# caption made only of these and of English scene words is ambiguous, so the generator draws another.
ENGLISH_LOOKALIKES: frozenset[str] = frozenset(
    "triangle rectangle orange violet rose grand petite viola stern rode wit links till".split()
)

WORDS_IN_IMAGES: tuple[str, ...] = (
    "HELLO", "SALE", "OPEN", "CLOSED", "STOP", "EXIT", "WELCOME", "LOVE", "HOME", "COFFEE", "PIZZA",
    "BOOKS", "MUSIC", "SUMMER", "WINTER", "PARKING", "HOTEL", "TAXI", "FRESH", "NEW", "FREE", "BAKERY",
    "HAPPY BIRTHDAY", "GOOD LUCK", "THANK YOU", "NO ENTRY", "BIG SALE", "GRAND OPENING", "BEST PRICE",
    "FREE WIFI", "OPEN 24 HOURS", "ROUTE 66", "ROOM 101", "ZONE 3", "GATE 7", "2024", "1999", "42",
    "Hello", "Welcome Home", "Fresh Bread", "Sunday", "Garden", "Ocean", "Vintage", "Coffee Shop",
    "Library", "Station", "Museum", "Market", "Harbor", "Cinema", "Pharmacy", "Bicycle", "Forest",
    "River", "Mountain", "Galaxy", "Rocket", "Pixel", "Robot", "Tiger", "Lemon", "Apple", "Banana",
    "Cherry", "Dragon", "Winter Sale", "Try Me", "Good Morning", "Sweet Dreams", "Game Over", "Level Up",
    "hello world", "relax", "smile", "dream big", "stay cool", "go green", "think", "play", "wow", "yes",
)

# Boilerplate captions: fixed phrases (each used once) and numbered patterns ({n}: a number).
BOILERPLATE_PHRASES: tuple[str, ...] = (
    "image", "photo", "picture", "untitled", "thumbnail", "click here", "download now", "stock photo",
    "no image", "image not found", "placeholder", "untitled image", "view image", "click to enlarge",
    "no description", "default image",
)
BOILERPLATE_PATTERNS: tuple[str, ...] = (
    "IMG_{n4}.jpg", "IMG_{n4}.JPG", "DSC_{n4}.JPG", "DSC{n5}.jpg", "DSCN{n4}.JPG", "P{n7}.JPG",
    "image_{n}.png", "photo_{n}.jpeg", "Screenshot_{n8}.png", "picture {n}", "image {n}", "photo {n}",
    "untitled {n}", "thumbnail {n}", "stock photo {n}", "click here {n}",
)

URL_HOSTS: tuple[str, ...] = ("example.com", "example.org", "example.net", "cdn.example.com",
                              "img.example.org", "static.example.net")
URL_DIRS: tuple[str, ...] = ("images", "img", "uploads", "media", "files", "photos", "assets", "static")
