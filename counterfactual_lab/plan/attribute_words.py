"""Word tables for text counterfactuals: how each attribute value is said in a caption.

Plain data, all lowercase unless the word is a proper adjective (race descriptors keep
their capitals). :mod:`counterfactual_lab.plan.captions` builds its lookups from
these tables; extend a table here and the rewriter, detector and instructions follow.
"""

from __future__ import annotations

GENDER_VALUES = ("male", "female", "non-binary")
AGE_VALUES = ("child", "young", "middle-aged", "elderly")
RACE_VALUES = ("Asian", "Black", "Indian", "Latino", "Middle Eastern", "White")

# Spellings people use for a value -> the vocabulary's canonical value.
VALUE_ALIASES: dict[str, dict[str, str]] = {
    "gender": {
        "female": "female", "woman": "female", "f": "female",
        "male": "male", "man": "male", "m": "male",
        "non-binary": "non-binary", "nonbinary": "non-binary", "non binary": "non-binary", "enby": "non-binary",
    },
    "age": {
        "child": "child", "kid": "child", "children": "child",
        "young": "young", "young adult": "young",
        "middle-aged": "middle-aged", "middle aged": "middle-aged", "middle age": "middle-aged",
        "elderly": "elderly", "old": "elderly", "senior": "elderly",
    },
    "race": {
        "asian": "Asian", "black": "Black", "indian": "Indian",
        "latino": "Latino", "latina": "Latino", "latinx": "Latino", "hispanic": "Latino",
        "middle eastern": "Middle Eastern", "middle-eastern": "Middle Eastern",
        "white": "White", "caucasian": "White",
    },
}

ATTRIBUTE_ALIASES = {"sex": "gender", "ethnicity": "race", "race/ethnicity": "race"}

# ---------------------------------------------------------------------------------------
# gender
# ---------------------------------------------------------------------------------------

# (male, female, non-binary) forms of one word. First match wins when a word appears in
# several rows (female "mum" -> male "dad", but male "dad" -> female "mom").
GENDERED_WORDS: tuple[tuple[str, str, str], ...] = (
    ("man", "woman", "non-binary person"),
    ("men", "women", "non-binary people"),
    ("boy", "girl", "non-binary child"),
    ("boys", "girls", "non-binary children"),
    ("gentleman", "lady", "non-binary person"),
    ("gentlemen", "ladies", "non-binary people"),
    ("guy", "gal", "non-binary person"),
    ("guys", "gals", "non-binary people"),
    ("lad", "lass", "youth"),
    ("lads", "lasses", "youths"),
    ("male", "female", "non-binary"),
    ("males", "females", "non-binary people"),
    ("masculine", "feminine", "androgynous"),
    ("father", "mother", "parent"),
    ("fathers", "mothers", "parents"),
    ("dad", "mom", "parent"),
    ("dads", "moms", "parents"),
    ("dad", "mum", "parent"),
    ("dads", "mums", "parents"),
    ("daddy", "mommy", "parent"),
    ("papa", "mama", "parent"),
    ("son", "daughter", "child"),
    ("sons", "daughters", "children"),
    ("brother", "sister", "sibling"),
    ("brothers", "sisters", "siblings"),
    ("husband", "wife", "spouse"),
    ("husbands", "wives", "spouses"),
    ("boyfriend", "girlfriend", "partner"),
    ("boyfriends", "girlfriends", "partners"),
    ("groom", "bride", "spouse"),
    ("bridegroom", "bride", "spouse"),
    ("fiance", "fiancee", "fiance"),
    ("widower", "widow", "widowed person"),
    ("grandfather", "grandmother", "grandparent"),
    ("grandfathers", "grandmothers", "grandparents"),
    ("grandpa", "grandma", "grandparent"),
    ("grandson", "granddaughter", "grandchild"),
    ("grandsons", "granddaughters", "grandchildren"),
    ("uncle", "aunt", "relative"),
    ("uncles", "aunts", "relatives"),
    ("nephew", "niece", "relative"),
    ("nephews", "nieces", "relatives"),
    ("stepfather", "stepmother", "stepparent"),
    ("stepson", "stepdaughter", "stepchild"),
    ("father-in-law", "mother-in-law", "parent-in-law"),
    ("son-in-law", "daughter-in-law", "child-in-law"),
    ("brother-in-law", "sister-in-law", "sibling-in-law"),
    ("king", "queen", "monarch"),
    ("kings", "queens", "monarchs"),
    ("prince", "princess", "royal"),
    ("princes", "princesses", "royals"),
    ("emperor", "empress", "monarch"),
    ("duke", "duchess", "noble"),
    ("actor", "actress", "actor"),
    ("actors", "actresses", "actors"),
    ("waiter", "waitress", "server"),
    ("waiters", "waitresses", "servers"),
    ("host", "hostess", "host"),
    ("steward", "stewardess", "flight attendant"),
    ("hero", "heroine", "hero"),
    ("heir", "heiress", "heir"),
    ("businessman", "businesswoman", "businessperson"),
    ("businessmen", "businesswomen", "businesspeople"),
    ("policeman", "policewoman", "police officer"),
    ("policemen", "policewomen", "police officers"),
    ("fireman", "firewoman", "firefighter"),
    ("firemen", "firewomen", "firefighters"),
    ("chairman", "chairwoman", "chairperson"),
    ("salesman", "saleswoman", "salesperson"),
    ("salesmen", "saleswomen", "salespeople"),
    ("spokesman", "spokeswoman", "spokesperson"),
    ("sportsman", "sportswoman", "athlete"),
    ("cameraman", "camerawoman", "camera operator"),
    ("fisherman", "fisherwoman", "fisher"),
    ("fishermen", "fisherwomen", "fishers"),
    ("craftsman", "craftswoman", "craftsperson"),
    ("horseman", "horsewoman", "rider"),
    ("cowboy", "cowgirl", "rider"),
    ("cowboys", "cowgirls", "riders"),
    ("schoolboy", "schoolgirl", "student"),
    ("schoolboys", "schoolgirls", "students"),
    ("mr", "ms", "mx"),
    ("mr", "mrs", "mx"),
    ("sir", "madam", "mx"),
)

# Neutral nouns and their gendered forms: used when the caption does not mention gender
# ("a person" -> "a woman" reads better than "a female person").
GENDER_NEUTRAL_NOUNS: dict[str, tuple[str, str, str]] = {
    "person": ("man", "woman", "non-binary person"),
    "people": ("men", "women", "non-binary people"),
    "persons": ("men", "women", "non-binary people"),
    "adult": ("man", "woman", "non-binary adult"),
    "adults": ("men", "women", "non-binary adults"),
    "child": ("boy", "girl", "non-binary child"),
    "children": ("boys", "girls", "non-binary children"),
    "kid": ("boy", "girl", "non-binary kid"),
    "kids": ("boys", "girls", "non-binary kids"),
    "parent": ("father", "mother", "non-binary parent"),
    "parents": ("fathers", "mothers", "non-binary parents"),
    "sibling": ("brother", "sister", "non-binary sibling"),
    "spouse": ("husband", "wife", "non-binary spouse"),
}

# Pronouns by grammatical role; "her" is both object and possessive, "his" both
# possessive determiner and pronoun, so the rewriter decides the role from context.
PRONOUNS: dict[str, dict[str, str]] = {
    "male": {"subject": "he", "object": "him", "determiner": "his", "possessive": "his", "reflexive": "himself"},
    "female": {"subject": "she", "object": "her", "determiner": "her", "possessive": "hers", "reflexive": "herself"},
    "non-binary": {"subject": "they", "object": "them", "determiner": "their", "possessive": "theirs", "reflexive": "themself"},
}

# Words that cannot follow a possessive "her"/"his" directly: after them, "her" is an
# object ("with her .", "gives her a ball") and "his" a pronoun ("the bag is his").
FUNCTION_WORDS = frozenset(
    """a an the this that these those and or but nor as at by for from in into on onto of off out over
    under up down to with without while who whom whose which when where is are was were be been being
    am has have had do does did will would can could should shall may might must so than then too very
    back away around about through across along near behind beside besides next inside outside during
    before after again now here there it its he she they him her them his hers their theirs we you i me
    my our your us himself herself themself themselves not no how what why all both each some any
    because if until against between among toward towards upon via per like""".split()
)

# ---------------------------------------------------------------------------------------
# age
# ---------------------------------------------------------------------------------------

# Adjective (or adjective phrase) -> age value.
AGE_ADJECTIVES: dict[str, str] = {
    "young": "young",
    "younger": "young",
    "youthful": "young",
    "teenage": "young",
    "teen": "young",
    "adolescent": "young",
    "middle-aged": "middle-aged",
    "middle aged": "middle-aged",
    "old": "elderly",
    "older": "elderly",
    "elderly": "elderly",
    "senior": "elderly",
    "aged": "elderly",
    "grey-haired": "elderly",
    "gray-haired": "elderly",
    "white-haired": "elderly",
}
# Adjectives that describe a person's age only when they modify a person noun
# ("a young giraffe", "an old car", "a senior engineer" are not about a person's age).
AMBIGUOUS_AGE_ADJECTIVES = frozenset({"young", "younger", "old", "older", "senior", "aged", "teen", "adolescent", "youthful"})
# "senior"/"aged" are ages only before a plain person noun ("a senior engineer" is a rank).
RANK_AMBIGUOUS_AGE_ADJECTIVES = frozenset({"senior", "aged"})
PLAIN_PERSON_NOUNS = frozenset(
    {"man", "men", "woman", "women", "person", "people", "persons", "lady", "ladies", "gentleman",
     "gentlemen", "couple", "couples", "citizen", "citizens", "adult", "adults", "individual", "individuals"}
)
# Words that only size a child ("a little girl"), never an age value on their own.
CHILD_SIZE_ADJECTIVES = frozenset({"little", "small", "tiny", "baby"})
# Adjectives that make a child noun a teenager ("a teenage girl" is young, not a child).
TEEN_ADJECTIVES = frozenset({"teenage", "teen", "adolescent"})

# The descriptor written for each value.
AGE_DESCRIPTORS = {"child": "child", "young": "young", "middle-aged": "middle-aged", "elderly": "elderly"}

# Child nouns and their adult forms.
CHILD_TO_ADULT: dict[str, str] = {
    "child": "person", "children": "people", "kid": "person", "kids": "people",
    "boy": "man", "boys": "men", "girl": "woman", "girls": "women",
    "toddler": "person", "toddlers": "people", "infant": "person", "infants": "people",
    "schoolboy": "man", "schoolgirl": "woman", "schoolboys": "men", "schoolgirls": "women",
}
# Adult nouns and their child forms (nouns missing here take the descriptor "child").
ADULT_TO_CHILD: dict[str, str] = {
    "man": "boy", "men": "boys", "woman": "girl", "women": "girls",
    "person": "child", "people": "children", "persons": "children",
    "adult": "child", "adults": "children",
    "lady": "girl", "ladies": "girls", "gentleman": "boy", "gentlemen": "boys",
    "guy": "boy", "guys": "boys", "teenager": "child", "teenagers": "children",
    "teen": "child", "teens": "children", "student": "schoolchild", "students": "schoolchildren",
}
# Nouns that state an age on their own; rewritten to "person"/"people" with a descriptor.
AGE_NOUNS: dict[str, tuple[str, str]] = {
    "teenager": ("young", "person"), "teenagers": ("young", "people"),
    "teen": ("young", "person"), "teens": ("young", "people"),
    "adolescent": ("young", "person"), "adolescents": ("young", "people"),
    "retiree": ("elderly", "person"), "retirees": ("elderly", "people"),
    "pensioner": ("elderly", "person"), "pensioners": ("elderly", "people"),
    "senior citizen": ("elderly", "person"), "senior citizens": ("elderly", "people"),
    "seniors": ("elderly", "people"),
}

NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}


def age_value_of_years(years: int) -> str:
    """The age value of a stated age in years ("a 5-year-old" is a child)."""
    if years < 13:
        return "child"
    if years < 30:
        return "young"
    if years < 60:
        return "middle-aged"
    return "elderly"


# ---------------------------------------------------------------------------------------
# race
# ---------------------------------------------------------------------------------------

# Descriptor (lowercase phrase) -> race value. None: a race descriptor outside the default
# vocabulary; it is still replaced when the caption is rewritten.
RACE_DESCRIPTORS: dict[str, str | None] = {
    "asian": "Asian", "east asian": "Asian", "southeast asian": "Asian", "asian-american": "Asian",
    "asian american": "Asian",
    "black": "Black", "african american": "Black", "african-american": "Black",
    "indian": "Indian", "south asian": "Indian",
    "latino": "Latino", "latina": "Latino", "latinx": "Latino", "hispanic": "Latino",
    "middle eastern": "Middle Eastern", "middle-eastern": "Middle Eastern", "arab": "Middle Eastern",
    "white": "White", "caucasian": "White",
    "native american": None, "pacific islander": None, "mixed-race": None, "biracial": None,
    "multiracial": None, "indigenous": None,
}
# The descriptor written for each value; Latino takes "Latina" before a female noun.
RACE_DESCRIPTORS_OUT = {
    "Asian": "Asian", "Black": "Black", "Indian": "Indian", "Latino": "Latino",
    "Middle Eastern": "Middle Eastern", "White": "White",
}
RACE_FEMININE = {"Latino": "Latina"}

# ---------------------------------------------------------------------------------------
# people
# ---------------------------------------------------------------------------------------

# Nouns that name people, singular; plurals are derived. Multi-word ones are matched first.
_PERSON_NOUNS_SINGULAR = """
person man woman boy girl child kid guy lady gentleman adult teenager teen toddler infant
individual couple family friend stranger neighbor neighbour resident citizen tourist traveler
traveller visitor pedestrian passenger commuter spectator shopper customer client patient
doctor nurse surgeon dentist pharmacist paramedic therapist psychologist psychiatrist counselor
veterinarian vet scientist researcher chemist biologist physicist engineer programmer developer
technician mechanic electrician plumber carpenter builder janitor housekeeper maid nanny
babysitter caregiver cashier clerk secretary receptionist manager executive ceo boss employee
worker laborer labourer farmer gardener rancher fisher accountant banker lawyer attorney judge
architect designer artist painter sculptor photographer musician singer guitarist drummer pianist
violinist dancer performer comedian magician writer author poet journalist reporter editor
librarian teacher professor lecturer tutor student pupil principal coach trainer instructor
athlete player runner jogger cyclist biker rider skier snowboarder surfer skateboarder swimmer
diver climber hiker golfer boxer wrestler batter catcher umpire referee goalkeeper
quarterback chef cook baker butcher bartender barista vendor seller merchant salesperson
shopkeeper cashier driver pilot captain sailor soldier officer guard detective sheriff firefighter
astronaut politician president senator mayor governor priest pastor minister rabbi imam monk nun
tailor hairdresser barber stylist florist courier postman mailman volunteer intern
leader presenter host hostess actor actress waiter waitress businessman businesswoman
policeman policewoman fireman chairman spokesperson
father mother dad mom mum parent son daughter brother sister sibling husband wife spouse
boyfriend girlfriend partner groom bride grandfather grandmother grandparent grandpa grandma
grandson granddaughter grandchild uncle aunt nephew niece king queen prince princess cowboy
cowgirl schoolboy schoolgirl fisherman retiree pensioner
shepherd herder beekeeper lifeguard ranger scout explorer graduate bride groom monarch
""".split()

_IRREGULAR_PLURALS = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "gentleman": "gentlemen",
    "businessman": "businessmen", "businesswoman": "businesswomen", "policeman": "policemen",
    "policewoman": "policewomen", "fireman": "firemen", "chairman": "chairmen", "postman": "postmen",
    "mailman": "mailmen", "fisherman": "fishermen", "wife": "wives", "grandchild": "grandchildren",
}

MULTIWORD_PERSON_NOUNS = frozenset(
    """police officer|construction worker|office worker|factory worker|social worker|health worker
    |healthcare worker|security guard|flight attendant|tennis player|baseball player|soccer player
    |football player|basketball player|hockey player|frisbee player|video game player|fire fighter
    |senior citizen|business person|sales person|team member|staff member|family member
    |software engineer|software developer|data scientist|truck driver|taxi driver|bus driver
    |delivery driver|police officers|construction workers|office workers|social workers
    |security guards|flight attendants|tennis players|baseball players|soccer players
    |football players|basketball players|hockey players|frisbee players|senior citizens
    |family members|truck drivers|taxi drivers|bus drivers|delivery drivers""".replace("\n", "")
    .replace("    ", "")
    .split("|")
)


def plural_of(noun: str) -> str:
    """English plural of a person noun (enough for the table above)."""
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun + "es"
    return noun + "s"


PERSON_NOUNS_SINGULAR = frozenset(_PERSON_NOUNS_SINGULAR)
PERSON_NOUNS_PLURAL = frozenset(plural_of(n) for n in _PERSON_NOUNS_SINGULAR) | {"persons", "folks", "guys"}
PERSON_NOUNS = PERSON_NOUNS_SINGULAR | PERSON_NOUNS_PLURAL

# Adjectives that may stand between a descriptor and its person noun ("an old bearded
# man", "a tall Black woman"); words ending in -ed/-ing count too.
FILLER_ADJECTIVES = frozenset(
    """tall short happy sad beautiful handsome pretty attractive cute bald blond blonde brunette
    redheaded fat thin slim skinny heavy heavyset big large small little tiny lone single friendly
    serious angry proud busy shirtless barefoot lovely nice cheerful athletic muscular professional
    local lonely""".split()
)

# Group nouns that are not people when followed by "of" ("a couple of giraffes").
GROUP_NOUNS = frozenset({"couple", "couples", "family", "families"})

# Gender adjectives that sit closest to the noun ("an elderly Black female doctor").
GENDER_ADJECTIVES = frozenset({"male", "female", "non-binary", "nonbinary"})
