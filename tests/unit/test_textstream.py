"""Stop strings and split characters in the text stream, with hand-checkable inputs."""

from __future__ import annotations

from backends.textstream import TextStream


def feed(stream: TextStream, pieces: list[bytes]) -> list[str]:
    return [stream.push(p) for p in pieces]


def test_text_passes_through_without_stops() -> None:
    s = TextStream()
    assert feed(s, [b"Hel", b"lo", b" world"]) == ["Hel", "lo", " world"]
    assert s.flush() == "" and s.text == "Hello world"


def test_a_possible_stop_prefix_is_held_back_then_released() -> None:
    s = TextStream(stop=["END"])
    assert feed(s, [b"abc E", b"N", b"x"]) == ["abc ", "", "ENx"]
    assert not s.stopped


def test_a_stop_across_tokens_cuts_the_text_before_it() -> None:
    s = TextStream(stop=["END", "zz"])
    assert feed(s, [b"one E", b"N", b"D two"]) == ["one ", "", ""]
    assert s.stopped and s.text == "one "
    assert s.push(b"more") == "" and s.flush() == ""


def test_the_earliest_of_several_stops_wins() -> None:
    s = TextStream(stop=["b", "abc"])
    assert s.push(b"xabc") == "x"  # "abc" starts before "b"
    assert s.stopped


def test_held_text_is_released_at_the_end() -> None:
    s = TextStream(stop=["END"])
    assert s.push(b"the EN") == "the "
    assert s.flush() == "EN"


def test_a_character_split_across_tokens_waits_for_its_last_byte() -> None:
    euro = "€".encode()  # three bytes
    s = TextStream()
    assert feed(s, [euro[:1], euro[1:2], euro[2:] + b"!"]) == ["", "", "€!"]


def test_an_incomplete_character_at_the_end_becomes_a_replacement() -> None:
    s = TextStream()
    assert s.push("€".encode()[:2]) == ""
    assert s.flush() == "\ufffd"
