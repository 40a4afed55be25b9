"""Write the shipped sample data set: adapters/data/sample_articles.jsonl.

About 400 synthetic news articles in ~40 story clusters, written from
templates (nothing is downloaded). The stories, people and companies are
invented; places and public institutions are real so the texts read like
news and entity extraction has people, organisations, locations and events
to find. Every record carries ``"synthetic": true``.

Shape, relative to the fixed reference time 2026-11-27T12:00:00Z:
- a few hot clusters with many articles, most from the last few hours;
- mid-sized clusters spread over two days; many small ones (1-5 articles);
- a handful of articles without a cluster_id;
- domains from well-known outlets and from unknown blogs (subdomains too),
  mostly derived from the url, a few given explicitly;
- texts of 80-400 words.

Deterministic: the same seed gives the same bytes. Rerun with
``python bench/make_sample_data.py [--out PATH] [--seed N]``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

REFERENCE_TIME = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
DEFAULT_SEED = 20261127
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "adapters" / "data" / "sample_articles.jsonl"
WINDOW_H = 48.0

MAJOR_OUTLETS = [
    ("reuters.com", "https://www.reuters.com/{section}/{slug}-{date}/"),
    ("apnews.com", "https://apnews.com/article/{slug}-{hex}"),
    ("bbc.co.uk", "https://www.bbc.co.uk/news/{section}-{num}"),
    ("theguardian.com", "https://www.theguardian.com/{section}/{ydate}/{slug}"),
    ("nytimes.com", "https://www.nytimes.com/{ydate}/{section}/{slug}.html"),
    ("ft.com", "https://www.ft.com/content/{uuid}"),
    ("lemonde.fr", "https://www.lemonde.fr/en/{section}/article/{ydate}/{slug}_{num}_4.html"),
    ("dw.com", "https://www.dw.com/en/{slug}/a-{num}"),
    ("aljazeera.com", "https://www.aljazeera.com/news/{ydate}/{slug}"),
    ("bloomberg.com", "https://www.bloomberg.com/news/articles/{date}/{slug}"),
    ("washingtonpost.com", "https://www.washingtonpost.com/{section}/{ydate}/{slug}/"),
    ("elpais.com", "https://english.elpais.com/{section}/{date}/{slug}.html"),
]
BLOGS = [
    ("harbourtimes.co.uk", "https://local.harbourtimes.co.uk/{slug}"),
    ("northwindpolicy.blog", "https://northwindpolicy.blog/{ydate}/{slug}/"),
    ("riverside-chronicle.net", "http://riverside-chronicle.net/?p={num}"),
    ("marketpulse.substack.com", "https://marketpulse.substack.com/p/{slug}"),
    ("eu.briefingroom.io", "https://eu.briefingroom.io/posts/{slug}"),
    ("quietcoast.wordpress.com", "https://quietcoast.wordpress.com/{ydate}/{slug}/"),
    ("techdispatch.dev", "https://www.techdispatch.dev/news/{slug}"),
    ("news.valleyherald.org", "https://news.valleyherald.org:8443/stories/{num}-{slug}"),
    ("greenledger.eco", "https://greenledger.eco/articles/{slug}"),
    ("blog.portcitywatch.net", "https://blog.portcitywatch.net/{slug}.html"),
]
SECTIONS = ["world", "business", "politics", "technology", "science", "sport", "europe", "climate"]
AUTHORS = [
    "Staff reporter",
    "Mira Castellanos",
    "Jonas Albrecht",
    "Priya Raman",
    "Tomasz Wilk",
    "Chiara Bellini",
    "Kwame Asante",
    "Hannah Oduya",
]

FIRST = [
    "Amara",
    "Lucas",
    "Sofia",
    "Mateo",
    "Ingrid",
    "Tomas",
    "Leila",
    "Daniel",
    "Yuki",
    "Kofi",
    "Elena",
    "Rafael",
    "Nadia",
    "Oskar",
    "Aisha",
    "Pieter",
    "Camille",
    "Dmitri",
    "Fatima",
    "Henrik",
    "Lucia",
    "Samuel",
    "Mei",
    "Arjun",
    "Zofia",
    "Emeka",
    "Clara",
    "Hugo",
    "Noor",
    "Stefan",
    "Ines",
    "Viktor",
    "Maya",
    "Gabriel",
    "Rania",
    "Anders",
    "Beatriz",
    "Kenji",
    "Olga",
    "Julien",
]
LAST = [
    "Okonkwo",
    "Lindqvist",
    "Moreau",
    "Haddad",
    "Novak",
    "Castillo",
    "Brennan",
    "Takahashi",
    "Mensah",
    "Rossi",
    "Kovacs",
    "Fernandes",
    "Ahmadi",
    "Van der Berg",
    "Dubois",
    "Petrov",
    "Nakamura",
    "Osei",
    "Schneider",
    "Alvarez",
    "Kowalski",
    "Sato",
    "Eriksen",
    "Benali",
    "Horvath",
    "Mbeki",
    "Laurent",
    "Iqbal",
    "Costa",
    "Jansen",
    "Varga",
    "Adeyemi",
    "Holm",
    "Reyes",
]
COMPANY_A = [
    "Norvale",
    "Kestrel",
    "Aurelia",
    "Brightwater",
    "Solvent",
    "Halcyon",
    "Meridian",
    "Tessaro",
    "Corvid",
    "Lumen",
    "Aldergrove",
    "Stratos",
    "Veridian",
    "Polaris",
    "Quillon",
    "Redfern",
    "Oakhurst",
    "Zephyr",
    "Ironbark",
    "Cobalt",
]
COMPANY_B = [
    "Energy",
    "Robotics",
    "Pharma",
    "Logistics",
    "Semiconductors",
    "Airlines",
    "Bank",
    "Telecom",
    "Motors",
    "Foods",
    "Capital",
    "Systems",
    "Materials",
    "Insurance",
    "Networks",
]

TECH_SUFFIXES = ["Robotics", "Semiconductors", "Systems", "Networks", "Telecom", "Labs"]
PLACES = [
    ("Lyon", "France"),
    ("Nairobi", "Kenya"),
    ("Hamburg", "Germany"),
    ("Osaka", "Japan"),
    ("Valparaiso", "Chile"),
    ("Gdansk", "Poland"),
    ("Porto", "Portugal"),
    ("Accra", "Ghana"),
    ("Montreal", "Canada"),
    ("Seville", "Spain"),
    ("Busan", "South Korea"),
    ("Antwerp", "Belgium"),
    ("Surabaya", "Indonesia"),
    ("Tbilisi", "Georgia"),
    ("Bergen", "Norway"),
    ("Cordoba", "Argentina"),
    ("Izmir", "Turkey"),
    ("Durban", "South Africa"),
    ("Brisbane", "Australia"),
    ("Cluj-Napoca", "Romania"),
    ("Tampere", "Finland"),
    ("Medellin", "Colombia"),
    ("Da Nang", "Vietnam"),
    ("Marrakesh", "Morocco"),
]
INSTITUTIONS = [
    "United Nations",
    "European Commission",
    "World Health Organization",
    "International Monetary Fund",
    "World Bank",
    "European Central Bank",
    "African Union",
    "World Trade Organization",
    "International Energy Agency",
    "Red Cross",
]

# Each kind: headlines, then the sentences its articles are built from. Slots:
# {p1} {r1} main person and role, {p2} {r2} second, {p3} an analyst at {o3};
# {o1} {o2} organisations, {inst} an institution, {city} {country}, {event};
# {n1}..{n3} numbers, {pct} a percentage, {day} a weekday.
KINDS: dict[str, dict[str, list[str]]] = {
    "election": {
        "event": ["{country} regional election", "{city} mayoral election"],
        "r1": ["opposition leader", "incumbent mayor", "party chair"],
        "r2": ["election commissioner", "rival candidate", "campaign director"],
        "orgs": ["Civic Renewal Party", "Social Alliance", "Green Future Movement"],
        "headlines": [
            "{p1} claims lead as counting continues in {event}",
            "Turnout hits {pct}% in {event}, officials say",
            "{event}: {p2} calls for patience as results trickle in",
            "What the {event} means for {country}'s coalition",
        ],
        "sentences": [
            "Polls closed across {city} on {day} evening after a campaign dominated by housing"
            " costs and public transport.",
            "{p1}, the {r1} of the {o1}, told supporters that early counts pointed to a clear"
            " mandate for change.",
            "{p2}, the {r2}, said results from {n1} of {n2} districts had been verified so far.",
            "Turnout reached {pct}%, the highest in more than a decade, according to the"
            " election commission.",
            "The {o2} conceded two seats in the northern suburbs but said it would wait for the"
            " final tally before commenting.",
            "Observers from the {inst} reported minor delays at polling stations but no serious"
            " irregularities.",
            "{p3}, a political scientist at {o3}, said the result would test the governing"
            " coalition in {country}.",
            "Queues formed outside schools and community halls in {city} well before the polls"
            " opened.",
            "Final results are expected on {day}, when the commission publishes the certified"
            " count.",
        ],
    },
    "central_bank": {
        "event": ["{o1} rate decision", "{o1} emergency meeting"],
        "r1": ["governor", "chief economist", "deputy governor"],
        "r2": ["finance minister", "head of the banking association", "treasury secretary"],
        "orgs": ["central bank of {country}", "{country} Monetary Authority"],
        "headlines": [
            "{o1} holds rates, signals cuts ahead",
            "{p1} says inflation fight 'not over' after {event}",
            "Markets rally as {o1} surprises with {pct} point cut",
            "{event}: bond yields fall to lowest since spring",
        ],
        "sentences": [
            "The {o1} left its benchmark rate unchanged at {pct}% on {day}, in line with most"
            " forecasts.",
            "{p1}, the bank's {r1}, said policymakers would watch wage growth closely over the"
            " coming months.",
            "Inflation in {country} slowed to {pct}% in October, the statistics office said last"
            " week.",
            "{p2}, the {r2}, welcomed the decision and said the budget would stay on course.",
            "Shares of {o2} rose {pct}% in {city} trading after the announcement.",
            "{p3}, an economist at {o3}, said the statement was more cautious than markets had"
            " expected.",
            "The {inst} has urged central banks to keep policy tight until price pressures ease.",
            "The currency weakened by {pct}% against the euro in the minutes after the decision.",
            "The next policy meeting is scheduled for late January.",
        ],
    },
    "merger": {
        "event": ["{o1}-{o2} merger", "takeover of {o2}"],
        "r1": ["chief executive", "chair", "chief financial officer"],
        "r2": ["chief executive", "founder", "board member"],
        "orgs": [],
        "headlines": [
            "{o1} agrees to buy {o2} for ${n1} million",
            "{p1} defends {o1}'s bid for {o2} as regulators circle",
            "Shareholders of {o2} back {event}",
            "Unions in {city} seek job guarantees over {event}",
        ],
        "sentences": [
            "{o1} said on {day} it had agreed to acquire {o2} in a deal valued at about ${n1}"
            " million.",
            "{p1}, {o1}'s {r1}, said the combined company would have operations in {n3} countries.",
            "{p2}, the {r2} of {o2}, will join the board of the enlarged group.",
            "The deal still needs approval from competition authorities in {country} and the"
            " European Commission.",
            "{o2} employs about {n2} people, most of them at its plant near {city}.",
            "{p3}, an analyst at {o3}, said the price valued {o2} at a {pct}% premium to its"
            " last closing share price.",
            "Both companies said there were no plans to close sites in the first two years.",
            "Shares of {o2} jumped {pct}% on the news while {o1} slipped slightly.",
            "The transaction is expected to close in the second half of next year.",
        ],
    },
    "disaster": {
        "event": ["{city} floods", "earthquake near {city}", "storm in {country}"],
        "r1": ["civil protection chief", "regional governor", "mayor of {city}"],
        "r2": ["emergency coordinator", "fire brigade commander", "health minister"],
        "orgs": ["{country} Civil Protection Agency", "{city} Fire Brigade"],
        "headlines": [
            "Thousands evacuated as {event} worsens",
            "{event}: death toll rises to {n3}",
            "Rescue teams search for survivors after {event}",
            "{p1} pledges aid as {event} leaves homes without power",
        ],
        "sentences": [
            "Emergency services in {city} evacuated about {n2} residents overnight as water"
            " levels kept rising.",
            "{p1}, the {r1}, said {n3} people had died and dozens were missing.",
            "The {o1} deployed helicopters and boats to reach villages cut off by landslides.",
            "{p2}, the {r2}, said hospitals in {city} were treating more than {n1} people.",
            "The {inst} said it was ready to send supplies and shelter kits to {country}.",
            "Power was cut to around {n2} homes, according to the grid operator {o2}.",
            "Forecasters warned that more heavy rain was expected on {day}.",
            "{p3}, a climate researcher at {o3}, said such events were becoming more frequent in"
            " the region.",
            "Schools across the province will stay closed until at least {day}.",
        ],
    },
    "summit": {
        "event": ["{city} Energy Summit", "{city} trade summit", "{city} security conference"],
        "r1": ["prime minister", "foreign minister", "president"],
        "r2": ["trade commissioner", "energy minister", "secretary-general"],
        "orgs": [],
        "headlines": [
            "Leaders gather in {city} for {event}",
            "{event} ends with pledge on {n3} billion in grid investment",
            "{p1} and {p2} clash over tariffs at {event}",
            "Protesters march in {city} as {event} opens",
        ],
        "sentences": [
            "Delegations from more than {n3} countries arrived in {city} for the {event}.",
            "{p1}, {country}'s {r1}, opened the meeting with a call for faster investment in"
            " power grids.",
            "{p2}, the {r2} of the {inst}, said a draft declaration was close to agreement.",
            "Officials said the final communique would commit members to {n3} billion dollars of"
            " new financing.",
            "Several thousand protesters marched through central {city} on {day}.",
            "{p3}, a senior fellow at {o3}, said the summit's targets lacked a clear timetable.",
            "Executives from {o1} and {o2} attended a side event on battery supply chains.",
            "The next meeting will be hosted by {country} in the spring.",
        ],
    },
    "trial": {
        "event": ["trial of {p1}", "{o1} fraud case"],
        "r1": ["former chief executive", "former minister", "businessman"],
        "r2": ["prosecutor", "defence lawyer", "presiding judge"],
        "orgs": ["{city} District Court", "{country} Supreme Court"],
        "headlines": [
            "{p1} denies charges as {event} opens in {city}",
            "Prosecutors seek {n3}-year sentence in {event}",
            "Key witness testifies in {event}",
            "Verdict expected {day} in {event}",
        ],
        "sentences": [
            "{p1}, a {r1}, appeared before the {o1} on {day} to answer fraud charges.",
            "{p2}, the {r2}, told the court that about ${n1} million had been moved through shell"
            " companies.",
            "Lawyers for {p1} said the accounts had been approved by auditors at {o2}.",
            "The case has drawn wide attention in {country}, where trust in public institutions"
            " has fallen.",
            "{p3}, a law professor at {o3}, said the trial could take several months.",
            "Dozens of reporters waited outside the courthouse in {city} for the hearing.",
            "The court is expected to hear {n3} more witnesses before closing arguments.",
            "{p1} has denied all wrongdoing.",
        ],
    },
    "sports": {
        "event": ["{city} Marathon", "Continental Cup final", "World Rowing Championships"],
        "r1": ["captain", "head coach", "striker"],
        "r2": ["goalkeeper", "team manager", "sporting director"],
        "orgs": ["{city} FC", "Atletico {city}", "{country} national team"],
        "headlines": [
            "{o1} win {event} after late goal from {p1}",
            "{p2} hails 'perfect night' as {o1} lift trophy",
            "{event}: {p1} breaks course record",
            "Fans celebrate in {city} after {event}",
        ],
        "sentences": [
            "{p1} scored in the {n3}th minute to give {o1} victory in the {event} on {day}.",
            "{p2}, the {r2}, said the squad had believed in the comeback until the final whistle.",
            "More than {n2} fans watched the match at the stadium in {city}.",
            "{o2} had led for most of the second half before conceding twice.",
            "{p3}, a commentator for {o3}, called it one of the best finals in years.",
            "The win is the club's first major trophy since 2009.",
            "Celebrations continued late into the night in the old town.",
            "The team will be received by the mayor of {city} on {day}.",
        ],
    },
    "product": {
        "event": ["launch of the {o1} X{n3}", "{o1} developer conference"],
        "r1": ["chief executive", "head of product", "chief technology officer"],
        "r2": ["vice president for hardware", "research director", "head of AI"],
        "orgs": [],
        "headlines": [
            "{o1} unveils new chip at {event}",
            "{p1}: {o1} will ship its first AI glasses in {country} next year",
            "Reviewers split over {o1}'s latest launch",
            "{event}: five things we learned",
        ],
        "sentences": [
            "{o1} unveiled its new device at the {event} in {city} on {day}.",
            "{p1}, the company's {r1}, said it would use {pct}% less power than the previous"
            " model.",
            "{p2}, the {r2}, said the chips were made by {o2} at a new plant in {country}.",
            "Prices start at ${n1}, and shipping begins in {n3} markets in the spring.",
            "{p3}, an analyst at {o3}, said the launch put pressure on rivals in the premium"
            " segment.",
            "Developers at the event were shown tools for building apps on the new platform.",
            "Privacy groups asked the European Commission to review the device's camera features.",
            "Shares of {o1} rose {pct}% in after-hours trading.",
        ],
    },
    "strike": {
        "event": ["{o1} strike", "national transport strike in {country}"],
        "r1": ["union leader", "general secretary", "spokesperson for the strikers"],
        "r2": ["transport minister", "chief executive", "labour minister"],
        "orgs": ["{country} Rail Workers' Union", "General Workers' Federation"],
        "headlines": [
            "Trains cancelled across {country} as {event} begins",
            "{p1} vows to continue {event} until pay deal",
            "Talks to end {event} collapse",
            "{event}: commuters face third day of disruption",
        ],
        "sentences": [
            "Most trains in and around {city} were cancelled on {day} as the {event} began.",
            "{p1}, the {r1} of the {o1}, said members wanted a pay rise of {pct}% to match"
            " inflation.",
            "{p2}, the {r2}, called the walkout irresponsible and urged the union to return to"
            " talks.",
            "Operator {o2} said only {n3} of its usual services would run.",
            "Commuters queued for buses and shared taxis outside the main station in {city}.",
            "{p3}, a labour economist at {o3}, said the dispute reflected years of stagnant wages.",
            "The union said the strike would last at least until {day}.",
            "Business groups estimated the cost of the disruption at ${n1} million a day.",
        ],
    },
    "climate": {
        "event": ["{city} climate talks", "{city} ocean conference"],
        "r1": ["climate envoy", "environment minister", "lead negotiator"],
        "r2": ["executive secretary", "director", "climate scientist"],
        "orgs": ["Alliance of Small Island States", "Climate Action Network"],
        "headlines": [
            "Negotiators in {city} race to close gap on climate finance",
            "{p1} warns {event} could end without deal",
            "{event}: draft text drops fossil fuel phase-out",
            "Island nations push for loss and damage fund at {event}",
        ],
        "sentences": [
            "Negotiators at the {event} worked through the night on a draft text on {day}.",
            "{p1}, the {r1} of {country}, said richer nations had to put more money on the table.",
            "{p2}, {r2} at the {inst}, said emissions must fall by {pct}% by 2035 to keep"
            " targets in reach.",
            "The {o1} said the current draft was too weak to protect vulnerable coastlines.",
            "Campaigners unfurled a banner outside the conference centre in {city}.",
            "{p3}, a researcher at {o3}, said the finance gap was more than {n3} billion dollars"
            " a year.",
            "Delegates expect the talks to run past their scheduled close on {day}.",
            "Energy companies including {o2} sent large delegations to the talks.",
        ],
    },
    "cyber": {
        "event": ["cyberattack on {o1}", "{o1} data breach"],
        "r1": ["chief executive", "chief information security officer", "spokesperson"],
        "r2": [
            "head of the national cyber agency",
            "digital minister",
            "data protection commissioner",
        ],
        "orgs": [],
        "headlines": [
            "{o1} hit by ransomware, services down across {country}",
            "{event}: data of {n2} customers exposed",
            "{p1} apologises after {event}",
            "Regulators open inquiry into {event}",
        ],
        "sentences": [
            "{o1} said on {day} that hackers had encrypted parts of its network in {city}.",
            "{p1}, the {r1}, said customer payments had been suspended as a precaution.",
            "{p2}, the {r2}, said the attack bore the hallmarks of a known criminal group.",
            "Personal data of about {n2} customers may have been copied, the company said.",
            "{p3}, a security researcher at {o3}, said the intruders had used a flaw patched"
            " months earlier.",
            "Technicians from {o2} were helping restore systems, which could take {n3} days.",
            "The company said it had not paid a ransom.",
            "Customers were advised to change passwords and watch for phishing emails.",
        ],
    },
    "health": {
        "event": ["measles outbreak in {city}", "new vaccine rollout in {country}"],
        "r1": ["health minister", "chief medical officer", "director of public health"],
        "r2": ["epidemiologist", "hospital director", "head of immunisation"],
        "orgs": ["{country} Institute of Public Health", "{city} General Hospital"],
        "headlines": [
            "{event}: {n3} new cases confirmed",
            "{p1} urges parents to vaccinate as {event} spreads",
            "WHO sends experts to help with {event}",
            "Clinics extend hours amid {event}",
        ],
        "sentences": [
            "Health authorities in {city} confirmed {n3} new cases on {day}, bringing the total"
            " to {n1}.",
            "{p1}, the {r1}, urged parents to check their children's vaccination records.",
            "{p2}, {r2} at the {o1}, said most cases were among unvaccinated children.",
            "The World Health Organization said it would send a team of experts to {country}.",
            "Clinics across the region will stay open until 9 pm to give extra doses.",
            "{p3}, a researcher at {o3}, said vaccination coverage had fallen to {pct}% in some"
            " districts.",
            "The {o2} said it had enough vaccine doses for the coming weeks.",
            "Officials will publish updated figures on {day}.",
        ],
    },
}
GENERIC = [
    '"We are working around the clock," {p1} told reporters in {city}.',
    '"This is a moment that calls for calm and for facts," {p2} said in a statement.',
    "{p1} is expected to speak to the press again on {day}.",
    "The announcement came as {country} prepares for a busy end of the year.",
    "Officials declined to comment further, citing ongoing discussions.",
    "Local media in {city} reported similar accounts from several witnesses.",
    "The story is developing and will be updated.",
    "A spokesperson for {o2} said the company was following events closely.",
    "{p3} added that the coming days would show whether the measures were enough.",
    "Critics said the government had been slow to respond.",
    "Social media posts showed crowds gathering in the centre of {city}.",
    "Earlier this year, {country} faced a similar situation that lasted for weeks.",
    "Reporting by the {city} bureau; additional reporting from the wire.",
]
BACKGROUND = [
    "{city}, the second-largest city in {country} by economic output, has been at the centre"
    " of national debates about investment, housing and transport for most of the past decade.",
    "In a briefing for diplomats on {day}, officials from the {inst} said they were monitoring"
    " the situation in {country} and would publish an assessment before the end of the month.",
    "{p3} of {o3}, who has studied similar cases across Europe, Africa and Latin America, said"
    " the outcome would depend less on the headlines of the coming days than on the detail of"
    " what was agreed afterwards.",
    "According to figures compiled by {o3}, spending on comparable programmes in {country} rose"
    " by {pct}% last year, while the number of people directly affected grew to about {n2}.",
    "{p1} first came to national prominence in {city}, where a long career in public life and"
    " business earned both loyal supporters and persistent critics.",
    "The episode has also been followed closely by investors: {o2}, which has large operations"
    " in the region, said it had set up a working group to assess the impact on its business.",
    "Historians note that {city} has seen moments like this before, and that the institutions"
    " built after them were designed to prevent the kind of disruption now being reported.",
    "Residents interviewed in the centre of {city} were divided, with some praising the speed"
    " of the response and others saying they had heard about it first on social media.",
    "Opposition figures in {country} called for a parliamentary hearing and asked {p2} to"
    " publish all documents related to the decision within {n3} days.",
    "Neighbouring countries have so far reacted cautiously, but diplomats said the issue would"
    " be raised at the next ministerial meeting of the {inst}.",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


@dataclass
class Story:
    cluster_id: str
    kind: str
    slots: dict[str, str]
    size: int
    hot: bool


def person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def company(rng: random.Random, kind: str = "") -> str:
    suffixes = TECH_SUFFIXES if kind in ("product", "cyber") else COMPANY_B
    return f"{rng.choice(COMPANY_A)} {rng.choice(suffixes)}"


def make_stories(rng: random.Random) -> list[Story]:
    hot = [58, 46, 38, 30]
    medium = [16, 14, 13, 12, 11, 10, 9, 8, 8, 7]
    sizes = hot + medium + [rng.randint(2, 7) for _ in range(26)]
    kinds = list(KINDS)
    stories = []
    for index, size in enumerate(sizes):
        kind = kinds[index % len(kinds)] if index < len(kinds) else rng.choice(kinds)
        spec = KINDS[kind]
        city, country = rng.choice(PLACES)
        slots = {
            "city": city,
            "country": country,
            "p1": person(rng),
            "p2": person(rng),
            "p3": person(rng),
            "o2": company(rng),
            "o3": rng.choice(
                [
                    "Bruegel",
                    "Chatham House",
                    "the University of " + city,
                    "Oxford Economics",
                    "the Kiel Institute",
                    "Sciences Po",
                    "Capital Markets Research",
                    "Moody's",
                ]
            ),
            "inst": rng.choice(INSTITUTIONS),
        }
        orgs = spec["orgs"]
        slots["o1"] = rng.choice(orgs).format(**slots) if orgs else company(rng, kind)
        slots["r1"] = rng.choice(spec["r1"]).format(**slots)
        slots["r2"] = rng.choice(spec["r2"]).format(**slots)
        slots["event"] = fill(rng.choice(spec["event"]), slots, rng)
        stories.append(Story(f"c-{index + 1:03d}", kind, slots, size, hot=index < len(hot)))
    return stories


def published_at(rng: random.Random, story: Story) -> datetime:
    if story.hot:
        hours_ago = min(rng.expovariate(1 / 3.0), WINDOW_H)
    elif story.size >= 7:
        centre = rng.uniform(4, 40)
        hours_ago = min(max(rng.gauss(centre, 5), 0.1), WINDOW_H)
    else:
        hours_ago = rng.uniform(0.1, WINDOW_H)
    minutes = round(hours_ago * 60)
    return REFERENCE_TIME - timedelta(minutes=minutes)


def format_time(rng: random.Random, when: datetime, domain: str) -> str:
    if domain.endswith(".fr") or domain == "dw.com":
        return when.astimezone(timezone(timedelta(hours=1))).isoformat(timespec="seconds")
    if rng.random() < 0.1:
        return when.strftime("%Y-%m-%dT%H:%M:%S")  # naive: read as UTC
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def fill(template: str, slots: dict[str, str], rng: random.Random) -> str:
    values = dict(slots)
    values.update(
        n1=str(rng.choice([120, 250, 480, 900, 1200, 3400, 5600])),
        n2=str(rng.choice([1500, 4000, 8200, 12000, 25000, 60000])),
        n3=str(rng.randint(3, 40)),
        pct=f"{rng.choice([0.25, 0.5, 1.2, 2.4, 3.1, 4.75, 7.5, 12, 18, 62, 71])}",
        day=rng.choice(WEEKDAYS),
    )
    return template.format(**values)


def make_text(rng: random.Random, story: Story) -> str:
    spec = KINDS[story.kind]
    target = min(400, max(80, int(rng.triangular(80, 400, 220))))
    pool = spec["sentences"][:]
    rng.shuffle(pool)
    pool = spec["sentences"][:1] + [s for s in pool if s != spec["sentences"][0]]
    extra = GENERIC[:]
    rng.shuffle(extra)
    sentences: list[str] = []
    words = 0
    background = BACKGROUND[:]
    rng.shuffle(background)
    candidates = pool + extra[:5] + background
    for template in candidates:
        sentence = fill(template, story.slots, rng)
        count = len(sentence.split())
        if words + count > target and words >= 80:
            break
        sentences.append(sentence)
        words += count
        if words >= target:
            break
    paragraphs = []
    while sentences:
        take = rng.randint(2, 4)
        paragraphs.append(" ".join(sentences[:take]))
        sentences = sentences[take:]
    return "\n\n".join(paragraphs)


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:70]


def make_url(rng: random.Random, pattern: str, title: str, when: datetime) -> str:
    return pattern.format(
        section=rng.choice(SECTIONS),
        slug=slugify(title),
        date=when.strftime("%Y-%m-%d"),
        ydate=when.strftime("%Y/%m/%d"),
        num=rng.randint(10_000_000, 99_999_999),
        hex=f"{rng.getrandbits(64):016x}",
        uuid=f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-{rng.getrandbits(16):04x}"
        f"-{rng.getrandbits(16):04x}-{rng.getrandbits(48):012x}",
    )


def make_records(seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    stories = make_stories(rng)
    drafts: list[tuple[datetime, Story, bool]] = []
    for story in stories:
        for _ in range(story.size):
            drafts.append((published_at(rng, story), story, True))
    for story in rng.sample(stories, 12):  # articles the clusterer never placed
        drafts.append((published_at(rng, story), story, False))
    drafts.sort(key=lambda d: (d[0], d[1].cluster_id))
    records = []
    for index, (when, story, clustered) in enumerate(drafts, start=1):
        major = rng.random() < (0.75 if story.hot else 0.55)
        domain, pattern = rng.choice(MAJOR_OUTLETS if major else BLOGS)
        title = fill(rng.choice(KINDS[story.kind]["headlines"]), story.slots, rng)
        title = title[0].upper() + title[1:]
        record: dict[str, object] = {
            "id": f"art-{index:05d}",
            "title": title,
            "text": make_text(rng, story),
            "url": make_url(rng, pattern, title, when),
            "published_at": format_time(rng, when, domain),
        }
        if rng.random() < 0.15:
            record["domain"] = domain
        if clustered:
            record["cluster_id"] = story.cluster_id
        record["lang"] = "en"
        if rng.random() < 0.6:
            record["author"] = rng.choice(AUTHORS)
        record["synthetic"] = True
        records.append(record)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args()
    records = make_records(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="\n") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} articles to {args.out}")


if __name__ == "__main__":
    main()
