"""The data-source conformance suite: `load_data` gives the configured columns, the same rows twice, one-line
errors, and a whole `opsloop run`.

    class TestMySource(SourceSuite, plugin="my-source", source="my-source://127.0.0.1:9000/telemetry"): pass

The project directory holds the small real set as `telemetry.csv` (for a source that reads files); `[data]` is
the small config's (`opsloop.testing.data.small_config()`: columns `timestamp`, `entity`, `label`, training
before 2024-01-09) with `source`, `[data] plugin` set to the plugin, and the `data` keyword merged in (other
column names, period filters). `bad_source` is a source of the plugin's kind that cannot be read (default:
`source` with "-conformance-missing" appended; None skips that check).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from opsloop.testing.conformance._base import MODEL, Bench, Suite, frames_equal, one_line

if TYPE_CHECKING:
    import pandas as pd

MISSING = "-conformance-missing"


class SourceSuite(Suite):
    """A data source (`load_data`).

    `class TestMine(SourceSuite, plugin="mine", source="mine://..."): pass` runs it. Keywords: `source`
    (required), `options` (its `[data.mine]` table), `data` (more of `[data]`), `bad_source`, `config`,
    `register`.
    """

    section: ClassVar[str] = "data"
    keywords: ClassVar[dict[str, Any]] = {"source": None, "data": {}, "bad_source": MISSING}
    source: ClassVar[str | None] = None
    data: ClassVar[dict[str, Any]] = {}
    bad_source: ClassVar[str | None] = MISSING

    def __init_subclass__(cls, **keywords: Any) -> None:
        super().__init_subclass__(**keywords)
        if cls.__test__ and not cls.source:
            raise TypeError(f'{cls.__name__}: SourceSuite needs source="..." (what [data] source would say)')

    @classmethod
    def data_table(cls, source: str) -> dict[str, Any]:
        return cls.stage(**{**cls.data, "source": source, "plugin": cls.plugin})

    @pytest.fixture(scope="class")
    @classmethod
    def source_bench(cls, tmp_path_factory: pytest.TempPathFactory, _conformance_plugin: None) -> Bench:
        """A project whose `[data]` names the source and the plugin."""
        return Bench.create(tmp_path_factory.mktemp("source"), cls.table(data=cls.data_table(cls.source or "")))

    def load(self, bench: Bench) -> pd.DataFrame:
        """What the plugin's `load_data` returns for the project's `[data]`, called as commands call it."""
        session = bench.session()
        config = session.config
        return session.plugins.call(type(self).plugin, "load_data", source=config.data.source,
                                    options=session.options_for("data", type(self).plugin), data=config.data,
                                    workdir=bench.path)

    def test_returns_a_frame_with_the_configured_columns(self, source_bench: Bench) -> None:
        """`load_data` returns a pandas DataFrame with rows, holding the time, series and target columns
        `[data]` names (named after `data.time`, `data.series`, `data.target`)."""
        import pandas as pd

        frame = self.load(source_bench)
        assert isinstance(frame, pd.DataFrame), f"load_data returned {type(frame).__name__}, not a DataFrame"
        assert len(frame) > 0, "load_data returned no rows"
        data = source_bench.session().config.data
        for role in ("time", "series", "target"):
            column = getattr(data, role)
            assert column is None or column in frame.columns, (
                f"[data] {role} = {column!r} is not a column of the frame: {list(frame.columns)[:30]}")

    def test_the_same_source_read_twice_gives_equal_frames(self, source_bench: Bench) -> None:
        """Reading the same source twice gives the same columns, dtypes and rows (for a live source: the same
        `[data]` on data that did not change)."""
        frames_equal(self.load(source_bench), self.load(source_bench), "a second read of the same source")

    def test_an_unreadable_source_is_a_one_line_error(self, source_bench: Bench, tmp_path: Any) -> None:
        """A source that cannot be read is a one-line opsloop error (DataError or ConfigError) naming it, both
        from the hook and from `opsloop run` (no traceback)."""
        from opsloop.errors import PluginCallError

        bad = type(self).bad_source
        if bad is None:
            pytest.skip("bad_source=None: no unreadable source of this kind was given")
        bad = (type(self).source or "") + MISSING if bad == MISSING else bad
        bench = Bench.create(tmp_path / "bad", type(self).table(data=type(self).data_table(bad)))
        with pytest.raises(PluginCallError) as caught:
            self.load(bench)
        one_line(caught.value.cause)
        result = bench.invoke("run").assert_error()
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, f"opsloop run printed more than one line:\n{result.stderr}"
        fragment = MISSING.strip("-") if MISSING in bad else bad
        assert fragment in lines[0], f"the error does not name the source {bad!r}: {lines[0]}"

    def test_a_whole_run_with_it(self, source_bench: Bench) -> None:
        """`opsloop run` reads its rows through the source and registers a version trained on them."""
        result = source_bench.invoke("run").assert_ok().json
        assert ("load", type(self).source) in [(s["stage"], p) for s in result["stages"] for p in s["plugins"]]
        assert [v["ref"] for v in result["versions"]] == [f"{MODEL}:1"]
