"""What a recording looks like on the page: a record's key -> a ``Preview`` with the log-mel spectrogram of its
first seconds (``spectrograms.py``) and, for the keys given a player, those seconds as a WAV data URI.

Keys are found as ``thumbnails.py`` finds images: a loose recording is the file its key names, read through Beam's
FileSystems (local, gs://, s3://) and streamed, only its first window decoded. A member of a tar shard
(``SHARD.tar#MEMBER``) is read from the shard, whose headers are read once for all its keys asked (at most the
limit of bytes per member); a record of any other file (a TFRecord's ``URI#N``) is not read, and a one-line reason
says why. Nothing here fails: what cannot be shown comes back as a ``Preview`` with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pipeline.report.spectrograms import (
    PREVIEW_SECONDS,
    first_seconds,
    log_mel_frames,
    png_data_uri,
    spectrogram_png,
    wav_bytes,
    wav_data_uri,
)
from pipeline.report.thumbnails import Preview, archive_of, short_error
from transforms.decode.audio import AudioPreprocessing
from transforms.read.tables import DEFAULT_MAX_INPUT_BYTES

__all__ = ["MAX_PLAYERS", "SPECTROGRAM", "audio_preview", "audio_previews", "tar_members", "round_robin"]

MAX_PLAYERS = 12          # recordings with a player (10 s of 16-bit WAV at 16 kHz: about 430 KB each in the page)
SPECTROGRAM = "spectrogram"


def audio_preview(key: str, source, prep: AudioPreprocessing, player: bool = False,
                  seconds: float = PREVIEW_SECONDS) -> Preview:
    """The spectrogram of the first ``seconds`` of a recording (``source``: bytes, or an object with ``open()``)
    as the model is fed it, with those samples as a WAV data URI when ``player``; or a one-line reason."""
    try:
        padded, signal = first_seconds(source, prep, seconds)
    except Exception as e:
        return Preview(key, reason=f"cannot be decoded as audio ({short_error(e)})", kind=SPECTROGRAM)
    start = prep.n_fft // 2
    frames = log_mel_frames(padded, prep, -(-signal // prep.hop))
    audio = wav_data_uri(wav_bytes(padded[start:start + signal], prep.sample_rate)) if player else None
    return Preview(key, src=png_data_uri(spectrogram_png(frames)), kind=SPECTROGRAM, audio=audio)


def tar_members(uri: str, names: Iterable[str], limit: int = DEFAULT_MAX_INPUT_BYTES) -> dict[str, bytes | str]:
    """The bytes of the members ``names`` of the tar shard ``uri`` (headers read until each is found, then each
    member read), or for each that cannot be read a one-line reason why."""
    from transforms.read.files import open_regular
    from transforms.read.tar_shards import index_tar

    wanted, found, places = set(names), {}, {}
    try:
        with open_regular(uri) as f:
            for sample in index_tar(f, limit):
                if isinstance(sample, Exception):
                    raise sample
                places.update((m.name, m) for m in sample.members if m.name in wanted)
                if wanted <= places.keys():
                    break
            for name, member in places.items():
                if member.offset < 0 or member.size > limit:
                    found[name] = (f"its member is a {member.kind}" if member.offset < 0 else
                                   f"its member holds {member.size:,} bytes, over the limit of {limit:,}")
                    continue
                f.seek(member.offset)
                data = f.read(member.size)
                found[name] = data if len(data) == member.size else f"its member is truncated in {uri}"
    except Exception as e:
        reason = f"its tar shard cannot be read ({short_error(e)})"
        return {name: found.get(name, reason) for name in wanted}
    return {name: found.get(name, f"no member {name} in {uri}") for name in wanted}


def _loose_file(key: str, limit: int):
    """The recording the key names, as a ``LazyFile``, or a one-line reason why it is not one."""
    from transforms.read.files import lazy_file

    try:
        return lazy_file(key, limit)
    except Exception as e:
        archive = archive_of(key)
        if archive is not None:
            return f"a record inside {archive}: not read for a spectrogram (loose files and tar members are)"
        return f"cannot be read ({short_error(e)})"


def audio_previews(keys: Iterable[str], prep: AudioPreprocessing, players: Iterable[str] = (),
                   limit: int = DEFAULT_MAX_INPUT_BYTES, seconds: float = PREVIEW_SECONDS) -> dict[str, Preview]:
    """``audio_preview`` of each distinct key, each read once, with a player for the keys in ``players``; the
    members of one tar shard are found in one pass over its headers."""
    players, found, shards = set(players), {}, {}
    for key in dict.fromkeys(keys):
        archive = archive_of(key)
        if archive is not None and archive.lower().endswith(".tar"):
            shards.setdefault(archive, []).append(key)
            continue
        source = _loose_file(key, limit)
        found[key] = (Preview(key, reason=source, kind=SPECTROGRAM) if isinstance(source, str) else
                      audio_preview(key, source, prep, key in players, seconds))
    for shard, asked in shards.items():
        members = tar_members(shard, [key[len(shard) + 1:] for key in asked], limit)
        for key in asked:
            data = members[key[len(shard) + 1:]]
            found[key] = (Preview(key, reason=data, kind=SPECTROGRAM) if isinstance(data, str) else
                          audio_preview(key, data, prep, key in players, seconds))
    return found


def round_robin(strips: Sequence[Sequence[str]], count: int) -> list[str]:
    """The first ``count`` keys taking one of each strip in turn: the first of every strip, then the second ..."""
    picked: list[str] = []
    for i in range(max((len(s) for s in strips), default=0)):
        picked += [s[i] for s in strips if i < len(s)]
    return picked[:max(count, 0)]
