"""``countries``: facts about countries, asked three ways, from a table that ships with clbench.

A pretrained language model knows many of these facts but not the form of the answer a task
wants. Each task asks one question of the same countries, in a few words, and the answer follows
the colon as a word would in running text (with its leading space, which a byte-level BPE's word
token carries):

* ``capital``: ``capital of Japan:`` → `` Tokyo``
* ``language``: ``language of Japan:`` → `` Japanese``
* ``continent``: ``continent of Japan:`` → `` Asia``

The tasks share their inputs and differ only in their first word, so what one task teaches
(answer a country with a continent) contradicts what another taught (answer it with a city):
sequential fine-tuning answers the earlier questions in the later task's form, which is what
forgetting looks like in a language model that still holds the facts. One model can hold all
three (the first word tells them apart), as multi-task training shows. Asked as full questions
(``What is the capital of Japan?``) the tasks collide far less, and so does forgetting
(docs/llm.md). The test countries are held out of every task's training split (``n_test`` of
them, drawn with ``seed``), so a task is learnt as a question, not as a list; scored by exact
match.

The table (:data:`TABLE`) keeps only countries whose three answers are unambiguous in English
and plain ASCII: a single official or majority language, a capital without a rival city or a
second spelling, and a country that lies on one continent.
"""

from __future__ import annotations

import random

from clbench import hookimpl
from clbench.params import require

from .base import Stream
from .generative import TextTask, generative_stream, text_tokenizer
from .lmdata import default_general

#: country | capital | language | continent.
TABLE = """\
France|Paris|French|Europe
Germany|Berlin|German|Europe
Italy|Rome|Italian|Europe
Spain|Madrid|Spanish|Europe
Portugal|Lisbon|Portuguese|Europe
Greece|Athens|Greek|Europe
Poland|Warsaw|Polish|Europe
Sweden|Stockholm|Swedish|Europe
Norway|Oslo|Norwegian|Europe
Finland|Helsinki|Finnish|Europe
Denmark|Copenhagen|Danish|Europe
Netherlands|Amsterdam|Dutch|Europe
Hungary|Budapest|Hungarian|Europe
Austria|Vienna|German|Europe
Romania|Bucharest|Romanian|Europe
Bulgaria|Sofia|Bulgarian|Europe
Croatia|Zagreb|Croatian|Europe
Serbia|Belgrade|Serbian|Europe
Slovakia|Bratislava|Slovak|Europe
Czech Republic|Prague|Czech|Europe
Iceland|Reykjavik|Icelandic|Europe
United Kingdom|London|English|Europe
Japan|Tokyo|Japanese|Asia
China|Beijing|Chinese|Asia
South Korea|Seoul|Korean|Asia
North Korea|Pyongyang|Korean|Asia
Thailand|Bangkok|Thai|Asia
Vietnam|Hanoi|Vietnamese|Asia
Cambodia|Phnom Penh|Khmer|Asia
Laos|Vientiane|Lao|Asia
Indonesia|Jakarta|Indonesian|Asia
Malaysia|Kuala Lumpur|Malay|Asia
India|New Delhi|Hindi|Asia
Pakistan|Islamabad|Urdu|Asia
Bangladesh|Dhaka|Bengali|Asia
Nepal|Kathmandu|Nepali|Asia
Iran|Tehran|Persian|Asia
Iraq|Baghdad|Arabic|Asia
Saudi Arabia|Riyadh|Arabic|Asia
Syria|Damascus|Arabic|Asia
Jordan|Amman|Arabic|Asia
Lebanon|Beirut|Arabic|Asia
Egypt|Cairo|Arabic|Africa
Libya|Tripoli|Arabic|Africa
Tunisia|Tunis|Arabic|Africa
Algeria|Algiers|Arabic|Africa
Morocco|Rabat|Arabic|Africa
Sudan|Khartoum|Arabic|Africa
Ethiopia|Addis Ababa|Amharic|Africa
Somalia|Mogadishu|Somali|Africa
Kenya|Nairobi|Swahili|Africa
Senegal|Dakar|French|Africa
Nigeria|Abuja|English|Africa
Ghana|Accra|English|Africa
Argentina|Buenos Aires|Spanish|South America
Chile|Santiago|Spanish|South America
Peru|Lima|Spanish|South America
Ecuador|Quito|Spanish|South America
Venezuela|Caracas|Spanish|South America
Uruguay|Montevideo|Spanish|South America
Mexico|Mexico City|Spanish|North America
Cuba|Havana|Spanish|North America
Jamaica|Kingston|English|North America
United States|Washington|English|North America
Australia|Canberra|English|Oceania
New Zealand|Wellington|English|Oceania
"""

COUNTRIES: list[tuple[str, str, str, str]] = [tuple(line.split("|")) for line in TABLE.splitlines()]  # type: ignore[misc]

#: task → (question, column of the answer in :data:`TABLE`).
QUESTIONS: dict[str, tuple[str, int]] = {
    "capital": ("capital of {}:", 1),
    "language": ("language of {}:", 2),
    "continent": ("continent of {}:", 3),
}
DEFAULT_TASKS = ("capital", "language", "continent")


def ask(task: str, row: tuple[str, ...]) -> tuple[str, str]:
    """The prompt and the answer (with its leading space) of ``task`` for a row of :data:`TABLE`."""
    question, col = QUESTIONS[task]
    return question.format(row[0]), " " + row[col]

#: The held-out general text: the first six paragraphs of clbench's default general text (the
#: opening of Jane Austen's *Pride and Prejudice*, public domain; ``data/SOURCES.md``), one document
#: each. Six, not all 24: each of them is scored four times per cell on a 135M model.
GENERAL = tuple(default_general()[:6])


def countries(
    tasks: list[str] = list(DEFAULT_TASKS),
    n_test: int = 20,
    n_train: int = 0,
    seed: int = 0,
    tokenizer: str = "bytes",
    max_len: int = 64,
    general: bool = True,
    order: list[int] | None = None,
) -> Stream:
    """Questions about countries (capital, language, continent) from clbench's own table.

    :param tasks: the questions, in stream order (see the module docstring).
    :param n_test: countries held out of training, the same for every task.
    :param n_train: training countries per task (0: all the others).
    :param seed: draws the test countries.
    :param general: measure general ability on a held-out English text (:data:`GENERAL`).
    """
    for name in tasks:
        require(name in QUESTIONS, "tasks", f"a list of {', '.join(QUESTIONS)}", tasks)
    require(len(set(tasks)) == len(tasks) and len(tasks) > 0, "tasks", "a non-empty list without repeats", tasks)
    require(0 < n_test < len(COUNTRIES), "n_test", f"in 1..{len(COUNTRIES) - 1}", n_test)
    require(0 <= n_train <= len(COUNTRIES) - n_test, "n_train", f"in 0..{len(COUNTRIES) - n_test} (0: all)", n_train)
    rows = list(COUNTRIES)
    random.Random(f"countries:{seed}").shuffle(rows)
    test, train = rows[:n_test], rows[n_test:][: n_train or None]
    tok = text_tokenizer(tokenizer, [p + a for name in tasks for p, a in (ask(name, r) for r in COUNTRIES)])
    text_tasks = []
    for name in tasks:
        # generation stops after the task's longest answer in the whole table, its end token and one more
        longest = max(len(ids) for ids in tok.encode_answers([ask(name, r)[1] for r in COUNTRIES]))
        text_tasks.append(TextTask(name, train=[ask(name, r) for r in train], test=[ask(name, r) for r in test],
                                   metric="exact_match", max_new_tokens=longest + 2))
    params = dict(tasks=list(tasks), n_test=n_test, n_train=n_train, seed=seed, tokenizer=tokenizer, max_len=max_len,
                  general=general)
    return generative_stream("countries", text_tasks, tok, max_len=max_len, order=order,
                             general=list(GENERAL) if general else None, params=params)


@hookimpl
def register_streams(register):
    register("countries", countries, description="questions about countries (capital, language, continent) from a table that ships with clbench")
