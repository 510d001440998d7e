"""Text counterfactuals: real-looking captions in, exact rewritten captions out."""

from __future__ import annotations

import pytest

from counterfactual_lab.config.dataset_spec import DEFAULT_VOCABULARIES
from counterfactual_lab.plan.captions import (
    Substitution,
    TextCounterfactual,
    attribute_prompt,
    detect_value,
    edit_instruction,
    indefinite_article,
    rewrite_caption,
)


def _replay(caption: str, subs: tuple[Substitution, ...]) -> str:
    """Apply substitutions to the original caption, right to left."""
    out = caption
    for sub in sorted(subs, key=lambda s: s.start, reverse=True):
        assert out[sub.start : sub.start + len(sub.original)] == sub.original
        out = out[: sub.start] + sub.replacement + out[sub.start + len(sub.original) :]
    return out


# ---------------------------------------------------------------------------------------
# gender
# ---------------------------------------------------------------------------------------

GENDER_CASES = [
    # (caption, source, target, expected caption)
    ("A man riding a wave on top of a surfboard.", "male", "female", "A woman riding a wave on top of a surfboard."),
    ("A woman is holding her umbrella in the rain.", None, "male", "A man is holding his umbrella in the rain."),
    ("A man walking his dog down the street.", "male", "female", "A woman walking her dog down the street."),
    ("Two men playing frisbee in a park.", "male", "female", "Two women playing frisbee in a park."),
    ("A little girl eating a slice of pizza.", "female", "male", "A little boy eating a slice of pizza."),
    ("A man and his son fishing off a pier.", None, "female", "A woman and her daughter fishing off a pier."),
    ("A father holding his baby on a couch.", "male", "female", "A mother holding her baby on a couch."),
    ("A woman with her brother at a wedding.", "female", "male", "A man with his brother at a wedding."),
    ("An actor on stage under a spotlight.", "male", "female", "An actress on stage under a spotlight."),
    ("A waitress serving coffee to customers.", "female", "male", "A waiter serving coffee to customers."),
    ("A businessman talking on his phone.", None, "female", "A businesswoman talking on her phone."),
    ("The king and queen wave to the crowd.", "male", "female", "The queen and queen wave to the crowd."),
    ("A husband and wife cutting a cake.", "female", "male", "A husband and husband cutting a cake."),
    ("Mr. Smith and his wife at dinner.", "male", "female", "Ms. Smith and her wife at dinner."),
    ("A grandmother reading to her grandson.", None, "male", "A grandfather reading to his grandson."),
    ("A gentleman in a suit tips his hat.", "male", "female", "A lady in a suit tips her hat."),
    ("Her uncle is teaching her to ride a bike.", "female", "male", "His uncle is teaching him to ride a bike."),
    ("A boy hugging his girlfriend.", "male", "female", "A girl hugging her girlfriend."),
    ("A policeman directing traffic.", None, "female", "A policewoman directing traffic."),
    ("A female doctor talks to a patient.", "female", "male", "A male doctor talks to a patient."),
    ("The woman's dog is sleeping.", None, "male", "The man's dog is sleeping."),
    ("The men's restroom sign.", None, "female", "The women's restroom sign."),
    ("She gave him her phone.", "female", "male", "He gave him his phone."),
    ("He is teaching himself to juggle.", "male", "female", "She is teaching herself to juggle."),
]


@pytest.mark.parametrize(("caption", "source", "target", "expected"), GENDER_CASES)
def test_gender_swap(caption, source, target, expected):
    assert rewrite_caption(caption, "gender", source, target).caption == expected


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("A woman hugging her daughter.", "A man hugging his son."),  # possessive before a noun
        ("A dog running toward her.", "A dog running toward him."),  # object at the end
        ("A man talking with her, smiling.", "A man talking with him, smiling."),  # object before a comma
        ("He gives her a ball.", "He gives him a ball."),  # object before an article
        ("She walks with her own dog.", "He walks with his own dog."),  # possessive before an adjective
        ("The red bag is hers.", "The red bag is his."),
    ],
)
def test_her_is_read_as_possessive_or_object_from_context(caption, expected):
    assert rewrite_caption(caption, "gender", "female", "male").caption == expected


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("The bag is his.", "The bag is hers."),
        ("A man with his bag.", "A woman with her bag."),
    ],
)
def test_his_is_read_as_determiner_or_pronoun(caption, expected):
    assert rewrite_caption(caption, "gender", "male", "female").caption == expected


@pytest.mark.parametrize(
    ("caption", "source", "expected"),
    [
        ("A man riding a horse.", "male", "A non-binary person riding a horse."),
        ("A woman reading her book.", "female", "A non-binary person reading their book."),
        ("He is playing tennis with his brother.", "male", "They is playing tennis with their sibling."),  # verbs left as is
        ("A policeman directing traffic.", None, "A police officer directing traffic."),
        ("A girl and her mother.", None, "A non-binary child and their parent."),
    ],
)
def test_gender_to_non_binary_uses_neutral_forms(caption, source, expected):
    assert rewrite_caption(caption, "gender", source, "non-binary").caption == expected


@pytest.mark.parametrize(
    ("caption", "target", "expected"),
    [
        ("A non-binary person and their dog.", "male", "A man and his dog."),
        ("A person walking their bike.", "female", "A woman walking her bike."),
    ],
)
def test_they_forms_swap_only_when_source_is_non_binary(caption, target, expected):
    assert rewrite_caption(caption, "gender", "non-binary", target).caption == expected


def test_they_is_left_alone_when_the_source_is_not_non_binary():
    # "they" is usually plural: without an explicit non-binary source it is not a gender word
    result = rewrite_caption("Two friends and their dogs. They are happy.", "gender", None, "female")
    assert result.caption == "Two female friends and their dogs. They are happy."


# ---------------------------------------------------------------------------------------
# age
# ---------------------------------------------------------------------------------------

AGE_CASES = [
    ("An old man sitting on a bench.", "elderly", "young", "A young man sitting on a bench."),
    ("An elderly woman walking her dog.", None, "young", "A young woman walking her dog."),
    ("An elderly man feeding pigeons.", "elderly", "middle-aged", "A middle-aged man feeding pigeons."),
    ("A young man skateboarding down a ramp.", "young", "elderly", "An elderly man skateboarding down a ramp."),
    ("A middle-aged man reading a newspaper.", None, "elderly", "An elderly man reading a newspaper."),
    ("A young boy swinging a baseball bat.", "child", "elderly", "An elderly man swinging a baseball bat."),
    ("A little girl holding a teddy bear.", "child", "young", "A young woman holding a teddy bear."),
    ("Two young girls playing soccer.", "child", "elderly", "Two elderly women playing soccer."),
    ("Kids playing in a park.", None, "elderly", "Elderly people playing in a park."),
    ("A boy flying a kite on the beach.", "child", "middle-aged", "A middle-aged man flying a kite on the beach."),
    ("A child brushing her teeth.", None, "elderly", "An elderly person brushing her teeth."),
    ("An old man sitting on a bench.", "elderly", "child", "A boy sitting on a bench."),
    ("An older woman knitting a scarf.", None, "child", "A girl knitting a scarf."),
    ("A young woman using a laptop.", "young", "child", "A girl using a laptop."),
    ("A 5-year-old girl blowing out candles.", None, "elderly", "An elderly woman blowing out candles."),
    ("An 80-year-old man dancing.", None, "young", "A young man dancing."),
    ("A five year old boy on a swing.", None, "elderly", "An elderly man on a swing."),
    ("A teenager on a skateboard.", None, "elderly", "An elderly person on a skateboard."),
    ("A teenage girl texting on her phone.", "young", "elderly", "An elderly woman texting on her phone."),
    ("Senior citizens playing chess.", None, "young", "Young people playing chess."),
    ("An old bearded man smiling.", "elderly", "young", "A young bearded man smiling."),
    ("An elderly doctor examining a patient.", "elderly", "child", "A child doctor examining a patient."),
    ("An old, bald man reading.", None, "young", "A young, bald man reading."),
]


@pytest.mark.parametrize(("caption", "source", "target", "expected"), AGE_CASES)
def test_age_swap(caption, source, target, expected):
    assert rewrite_caption(caption, "age", source, target).caption == expected


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        # "young", "old", "little", "senior" that do not describe a person are left alone
        ("A young giraffe standing next to a woman.", "A young giraffe standing next to an elderly woman."),
        ("An old car parked next to a man.", "An old car parked next to an elderly man."),
        ("A little dog chasing a boy.", "A little dog chasing an elderly man."),
        ("A senior engineer at her desk.", "A senior elderly engineer at her desk."),
    ],
)
def test_age_words_that_do_not_describe_a_person_are_not_swapped(caption, expected):
    assert rewrite_caption(caption, "age", None, "elderly").caption == expected


# ---------------------------------------------------------------------------------------
# race
# ---------------------------------------------------------------------------------------

RACE_CASES = [
    ("A white man wearing a black hat.", "White", "Black", "A Black man wearing a black hat."),
    ("A Black woman smiling at the camera.", "Black", "Asian", "An Asian woman smiling at the camera."),
    ("An Asian man selling vegetables.", "Asian", "White", "A White man selling vegetables."),
    ("A group of Asian students in a classroom.", "Asian", "Black", "A group of Black students in a classroom."),
    ("A Hispanic woman cooking dinner.", "Latino", "Indian", "An Indian woman cooking dinner."),
    ("A white woman cooking dinner.", None, "Latino", "A Latina woman cooking dinner."),
    ("A Caucasian man playing guitar.", None, "Middle Eastern", "A Middle Eastern man playing guitar."),
    ("An Indian man selling spices.", "Indian", "Middle Eastern", "A Middle Eastern man selling spices."),
    ("A Middle Eastern doctor reading a chart.", None, "Latino", "A Latino doctor reading a chart."),
    ("An African American nurse with her patient.", "Black", "White", "A White nurse with her patient."),
    ("An old Black man playing chess.", "Black", "Asian", "An old Asian man playing chess."),
    ("A black female doctor.", None, "Latino", "A Latina female doctor."),
    ("A BLACK MAN ON A BIKE", "Black", "White", "A WHITE MAN ON A BIKE"),
]


@pytest.mark.parametrize(("caption", "source", "target", "expected"), RACE_CASES)
def test_race_swap(caption, source, target, expected):
    assert rewrite_caption(caption, "race", source, target).caption == expected


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("A black dog sitting next to a man.", "A black dog sitting next to an Asian man."),
        ("A man in a white shirt.", "An Asian man in a white shirt."),
        ("A black and white photo of a woman.", "A black and white photo of an Asian woman."),
        ("A white haired man.", "A white haired Asian man."),
        ("A plate of Indian food.", "An Asian person: A plate of Indian food."),
    ],
)
def test_colours_and_cuisines_are_not_race(caption, expected):
    assert rewrite_caption(caption, "race", None, "Asian").caption == expected


# ---------------------------------------------------------------------------------------
# case, punctuation, articles, whole words
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "attribute", "target", "expected"),
    [
        ("A MAN ON A HORSE", "gender", "female", "A WOMAN ON A HORSE"),
        ("Man riding a horse on the beach.", "gender", "female", "Woman riding a horse on the beach."),
        ("HE IS HERE", "gender", "female", "SHE IS HERE"),
        ("A man... and a dog!", "gender", "female", "A woman... and a dog!"),
        ("\"The man,\" she said.", "gender", "male", "\"The man,\" he said."),
        ("Man riding a horse on the beach.", "age", "elderly", "Elderly man riding a horse on the beach."),
        ("A MAN ON A HORSE", "age", "elderly", "AN ELDERLY MAN ON A HORSE"),
        ("Old man (left) and his dog.", "age", "young", "Young man (left) and his dog."),
    ],
)
def test_case_and_punctuation_are_kept(caption, attribute, target, expected):
    assert rewrite_caption(caption, attribute, None, target).caption == expected


@pytest.mark.parametrize(
    ("caption", "attribute", "source", "target", "expected"),
    [
        ("An elderly man crossing the street.", "age", "elderly", "young", "A young man crossing the street."),
        ("A young woman reading.", "age", "young", "elderly", "An elderly woman reading."),
        ("An Asian man cooking.", "race", "Asian", "Black", "A Black man cooking."),
        ("A Black man cooking.", "race", "Black", "Indian", "An Indian man cooking."),
        ("A person jogging.", "age", None, "elderly", "An elderly person jogging."),
        ("An umpire calls the pitch.", "gender", None, "female", "A female umpire calls the pitch."),
        ("A waiter pours wine.", "gender", "male", "female", "A waitress pours wine."),
        ("An actress on stage.", "gender", "female", "male", "An actor on stage."),
    ],
)
def test_articles_follow_the_new_word(caption, attribute, source, target, expected):
    assert rewrite_caption(caption, attribute, source, target).caption == expected


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        # "manager", "human", "woman", "shepherd", "Germany" contain "man"/"he" but are other words
        ("The manager greets a human visitor.", "The female manager greets a human visitor."),
        ("A shepherd with the sheep in Germany.", "A female shepherd with the sheep in Germany."),
        ("A man-made lake near a fisherman.", "A man-made lake near a fisherwoman."),
    ],
)
def test_only_whole_words_match(caption, expected):
    assert rewrite_caption(caption, "gender", None, "female").caption == expected


def test_the_other_value_is_not_rewritten_when_the_source_is_given():
    result = rewrite_caption("A man and a woman on a bench.", "gender", "female", "male")
    assert result.caption == "A man and a man on a bench."


def test_only_the_source_race_changes_in_a_mixed_caption():
    result = rewrite_caption("An Asian man and a White woman talking.", "race", "Asian", "Black")
    assert result.caption == "A Black man and a White woman talking."


def test_a_caption_already_stating_the_target_is_unchanged():
    result = rewrite_caption("A woman reading her book.", "gender", "male", "female")
    assert (result.caption, result.substitutions, result.inserted) == ("A woman reading her book.", (), False)
    assert "already states" in result.explanation


# ---------------------------------------------------------------------------------------
# insertion
# ---------------------------------------------------------------------------------------

INSERTION_CASES = [
    ("A doctor examines a patient.", "gender", "female", "A female doctor examines a patient."),
    ("A nurse takes a blood sample.", "gender", "male", "A male nurse takes a blood sample."),
    ("A person riding a bike down the street.", "gender", "female", "A woman riding a bike down the street."),
    ("A group of people standing around a kitchen.", "gender", "male", "A group of men standing around a kitchen."),
    ("Children playing in the snow.", "gender", "female", "Girls playing in the snow."),
    ("A person in a red coat.", "gender", "non-binary", "A non-binary person in a red coat."),
    ("A police officer on a horse.", "gender", "female", "A female police officer on a horse."),
    ("A person riding a bike down the street.", "age", "elderly", "An elderly person riding a bike down the street."),
    ("A man reading in the library.", "age", "child", "A boy reading in the library."),
    ("A chef chopping onions.", "age", "middle-aged", "A middle-aged chef chopping onions."),
    ("A Black man reading.", "age", "elderly", "An elderly Black man reading."),
    ("A teacher in front of a blackboard.", "race", "Indian", "An Indian teacher in front of a blackboard."),
    ("A woman buying flowers.", "race", "Latino", "A Latina woman buying flowers."),
    ("A female pilot in a cockpit.", "race", "Black", "A Black female pilot in a cockpit."),
    ("A tennis player swinging a racket.", "race", "Asian", "An Asian tennis player swinging a racket."),
    ("A couple of giraffes next to a man.", "race", "White", "A couple of giraffes next to a White man."),
]


@pytest.mark.parametrize(("caption", "attribute", "target", "expected"), INSERTION_CASES)
def test_caption_without_the_attribute_gets_the_descriptor(caption, attribute, target, expected):
    result = rewrite_caption(caption, attribute, None, target)
    assert (result.caption, result.inserted) == (expected, True)


def test_insertion_is_explained():
    result = rewrite_caption("A person riding a bike.", "age", None, "elderly")
    assert result.explanation == "inserted 'elderly' before 'person'"
    assert result.substitutions == (Substitution(original="A person", replacement="An elderly person", start=0),)


@pytest.mark.parametrize(
    ("caption", "attribute", "target", "expected"),
    [
        ("A bowl of fruit on a table.", "age", "elderly", "An elderly person: A bowl of fruit on a table."),
        ("a red bus parked on the street", "gender", "female", "a woman: a red bus parked on the street"),
        ("A plate of food.", "race", "Black", "A Black person: A plate of food."),
        ("A cat on a sofa.", "religion", "Buddhist", "A Buddhist person: A cat on a sofa."),
        ("", "age", "child", "a child"),
    ],
)
def test_caption_without_a_person_is_prefixed(caption, attribute, target, expected):
    result = rewrite_caption(caption, attribute, None, target)
    assert (result.caption, result.inserted) == (expected, True)
    assert result.explanation.startswith(("no person mentioned", "empty caption"))


# ---------------------------------------------------------------------------------------
# substitutions: what the user reads
# ---------------------------------------------------------------------------------------


def test_substitutions_list_each_change_at_its_original_offset():
    caption = "An old man walking his dog."
    result = rewrite_caption(caption, "age", "elderly", "young")
    assert result == TextCounterfactual(
        caption="A young man walking his dog.",
        substitutions=(Substitution(original="An old", replacement="A young", start=0),),
        inserted=False,
        explanation="An old → A young",
    )


def test_gender_explanation_lists_every_swap():
    result = rewrite_caption("A man walking his dog with his son.", "gender", "male", "female")
    assert result.explanation == "man → woman; his → her; his → her; son → daughter"
    assert [s.start for s in result.substitutions] == [2, 14, 27, 31]


@pytest.mark.parametrize(
    ("caption", "attribute", "source", "target"),
    [case[:1] + ("gender",) + case[1:3] for case in GENDER_CASES]
    + [case[:1] + ("age",) + case[1:3] for case in AGE_CASES]
    + [case[:1] + ("race",) + case[1:3] for case in RACE_CASES]
    + [(case[0], case[1], None, case[2]) for case in INSERTION_CASES],
)
def test_substitutions_replayed_on_the_original_give_the_new_caption(caption, attribute, source, target):
    result = rewrite_caption(caption, attribute, source, target)
    assert _replay(caption, result.substitutions) == result.caption


# ---------------------------------------------------------------------------------------
# custom attributes and values
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "attribute", "source", "target", "expected"),
    [
        ("A Christian woman praying.", "religion", "Christian", "Muslim", "A Muslim woman praying."),
        ("A person praying in a field.", "religion", None, "Muslim", "A Muslim person praying in a field."),
        ("A man in a wheelchair.", "disability", None, "blind", "A blind man in a wheelchair."),
        ("A slim woman jogging.", "body type", "slim", "plus-size", "A plus-size woman jogging."),
        ("An Asian man cooking.", "race", None, "Pacific Islander", "A Pacific Islander man cooking."),
        ("A Pacific Islander man cooking.", "race", "Pacific Islander", "Black", "A Black man cooking."),
        ("A man riding a horse.", "gender", None, "genderqueer", "A genderqueer person riding a horse."),
        ("He is reading.", "gender", "male", "genderqueer", "They is reading."),
        ("An old man reading.", "age", "elderly", "teenage", "A teenage man reading."),
        ("A doctor at work.", "age", None, "forty-something", "A forty-something doctor at work."),
    ],
)
def test_custom_attributes_and_values_use_the_value_as_descriptor(caption, attribute, source, target, expected):
    assert rewrite_caption(caption, attribute, source, target).caption == expected


@pytest.mark.parametrize(
    ("attribute", "source", "target", "expected"),
    [
        ("Gender", "Male", "FEMALE", "A woman reading."),
        ("sex", "m", "woman", "A woman reading."),
        ("race", "white", "hispanic", "A Latino man reading."),
    ],
)
def test_attribute_and_value_names_are_matched_case_insensitively(attribute, source, target, expected):
    caption = "A White man reading." if attribute == "race" else "A man reading."
    assert rewrite_caption(caption, attribute, source, target).caption == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"caption": None, "attribute": "gender", "source_value": None, "target_value": "female"}, "caption must be a string"),
        ({"caption": "a man", "attribute": " ", "source_value": None, "target_value": "female"}, "attribute must be"),
        ({"caption": "a man", "attribute": "gender", "source_value": None, "target_value": ""}, "target_value"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rewrite_caption(**kwargs)


def test_same_source_and_target_changes_nothing():
    result = rewrite_caption("A man reading.", "gender", "male", "male")
    assert (result.caption, result.substitutions) == ("A man reading.", ())


@pytest.mark.parametrize("attribute", sorted(DEFAULT_VOCABULARIES))
def test_every_default_value_pair_rewrites_without_error(attribute):
    captions = ["A man walking his dog.", "A bowl of soup.", "An old woman and her grandson.", "A Black child."]
    values = DEFAULT_VOCABULARIES[attribute]
    for caption in captions:
        for source in [None, *values]:
            for target in values:
                result = rewrite_caption(caption, attribute, source, target)
                assert _replay(caption, result.substitutions) == result.caption


# ---------------------------------------------------------------------------------------
# detect_value
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "attribute", "expected"),
    [
        ("A woman holding an umbrella.", "gender", "female"),
        ("An old man sitting on a bench.", "gender", "male"),
        ("A man and his son fishing.", "gender", "male"),
        ("A nurse checking on her patient.", "gender", "female"),
        ("A man and a woman on a bench.", "gender", None),
        ("A person and their dog.", "gender", None),
        ("A doctor at work.", "gender", None),
        ("The manager and a human.", "gender", None),
        ("An old man sitting on a bench.", "age", "elderly"),
        ("A little girl with a kite.", "age", "child"),
        ("A young boy swinging a bat.", "age", "child"),
        ("A young woman using a laptop.", "age", "young"),
        ("A teenage girl texting.", "age", "young"),
        ("A 15-year-old boy skating.", "age", "young"),
        ("A five year old boy on a swing.", "age", "child"),
        ("A middle-aged man reading.", "age", "middle-aged"),
        ("Senior citizens playing chess.", "age", "elderly"),
        ("A young giraffe eating leaves.", "age", None),
        ("A man reading.", "age", None),
        ("An old man and a young woman.", "age", None),
        ("A Hispanic woman cooking.", "race", "Latino"),
        ("A white man wearing a black hat.", "race", "White"),
        ("An African American nurse.", "race", "Black"),
        ("A black cat on a white sofa.", "race", None),
        ("A plate of Indian food.", "race", None),
    ],
)
def test_detect_value(caption, attribute, expected):
    assert detect_value(caption, attribute) == expected


def test_detect_value_of_a_custom_attribute_needs_its_vocabulary():
    caption = "A Muslim woman praying."
    assert detect_value(caption, "religion") is None
    assert detect_value(caption, "religion", ["christian", "muslim"]) == "muslim"
    assert detect_value("A Muslim and a Christian talking.", "religion", ["Christian", "Muslim"]) is None


def test_detect_value_answers_only_within_the_given_vocabulary():
    assert detect_value("A non-binary person.", "gender", ["female", "male"]) is None
    assert detect_value("A woman.", "gender", ["Female", "Male"]) == "Female"


# ---------------------------------------------------------------------------------------
# edit_instruction and attribute_prompt
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("gender", "male", "female"), "make the man a woman"),
        (("gender", "female", "male"), "make the woman a man"),
        (("gender", None, "non-binary", "A man riding a horse."), "make the man a non-binary person"),
        (("gender", None, "female", "A doctor at work."), "make the doctor female"),
        (("gender", None, "female", "A person at work."), "make the person a woman"),
        (("gender", "female", "male", "Two women on a bench."), "make the women men"),
        (("gender", "male", "female", "An actor on stage."), "make the actor an actress"),
        (("age", None, "elderly"), "make the person elderly"),
        (("age", "young", "elderly", "A young man skating."), "make the man elderly"),
        (("age", "child", "elderly", "A young boy swinging a bat."), "make the boy an elderly man"),
        (("age", None, "child", "A man reading."), "make the man a boy"),
        (("age", None, "child", "A doctor reading."), "make the doctor a child"),
        (("race", None, "Black"), "make the person Black"),
        (("race", "White", "Asian", "A white man cooking."), "make the man Asian"),
        (("race", None, "Latino", "A woman cooking."), "make the woman Latina"),
        (("religion", None, "Muslim"), "make the person Muslim"),
    ],
)
def test_edit_instruction(args, expected):
    assert edit_instruction(*args) == expected


@pytest.mark.parametrize(
    ("attribute", "value", "expected"),
    [
        ("gender", "female", "a photo of a woman"),
        ("gender", "male", "a photo of a man"),
        ("gender", "non-binary", "a photo of a non-binary person"),
        ("age", "child", "a photo of a child"),
        ("age", "young", "a photo of a young adult"),
        ("age", "middle-aged", "a photo of a middle-aged person"),
        ("age", "elderly", "a photo of an elderly person"),
        ("race", "Asian", "a photo of an Asian person"),
        ("race", "Black", "a photo of a Black person"),
        ("race", "Middle Eastern", "a photo of a Middle Eastern person"),
        ("religion", "Muslim", "a photo of a Muslim person"),
        ("age", "teenager", "a photo of a teenager"),
    ],
)
def test_attribute_prompt(attribute, value, expected):
    assert attribute_prompt(attribute, value) == expected


def test_attribute_prompts_of_one_attribute_are_distinct():
    for attribute, values in DEFAULT_VOCABULARIES.items():
        prompts = [attribute_prompt(attribute, v) for v in values]
        assert len(set(prompts)) == len(values), prompts


@pytest.mark.parametrize(
    ("word", "expected"),
    [("elderly", "an"), ("young", "a"), ("umpire", "an"), ("university", "a"), ("hour", "an"),
     ("European", "a"), ("8-year-old", "an"), ("11-year-old", "an"), ("5-year-old", "a"), ("one", "a")],
)
def test_indefinite_article(word, expected):
    assert indefinite_article(word) == expected
