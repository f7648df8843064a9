"""The deploy-target conformance suite: deploy, `deploy_status` says so with the version, `undeploy` takes it
down, and status says so.

    class TestMyTarget(DeploySuite, plugin="my-target", options={"port": 0}): pass

The version is a real one: the small set's (`opsloop.testing.data.small_config()`) built and registered by
opsloop's runner, with `production` on it, loaded from its verified bundle; `deploy` gets it with the later
period's raw rows, as in `opsloop run`. Whatever the target put out is taken down when the class ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import pytest

from opsloop.testing.conformance._base import MODEL, Bench, Suite, one_line

if TYPE_CHECKING:
    from opsloop.bundle import LoadedModel
    from opsloop.session import Session
    from opsloop.types import Dataset, Deployment, DeploymentStatus, ModelVersion, RunContext


@attrs.define
class Target:
    """The deploy target under test, with its checked options, and the version it puts out."""

    name: str
    session: Session = attrs.field(repr=False)
    run: RunContext = attrs.field(repr=False)
    options: Any
    version: ModelVersion
    model: LoadedModel = attrs.field(repr=False)
    later: Dataset = attrs.field(repr=False)

    def deploy(self) -> Deployment:
        from opsloop.types import Deployment

        out = self.session.plugins.call(self.name, "deploy", version=self.version, model=self.model,
                                        dataset=self.later, options=self.options, run=self.run)
        assert isinstance(out, Deployment), f"deploy returned {type(out).__name__}, not Deployment"
        return out

    def status(self, model_name: str = MODEL) -> DeploymentStatus:
        return self._ask("deploy_status", model_name)

    def undeploy(self, model_name: str = MODEL) -> DeploymentStatus:
        return self._ask("undeploy", model_name)

    def _ask(self, hook: str, model_name: str) -> DeploymentStatus:
        from opsloop.types import DeploymentStatus

        if not self.session.plugins.implements(self.name, hook):
            pytest.fail(f'plugin "{self.name}" does not implement {hook}: `opsloop deploy '
                        f'{"status" if hook == "deploy_status" else "remove"}` cannot '
                        f'{"say what it has out" if hook == "deploy_status" else "take it down"} (docs/hooks.md)')
        out = self.session.plugins.call(self.name, hook, model_name=model_name, options=self.options, run=self.run)
        assert isinstance(out, DeploymentStatus), f"{hook} returned {type(out).__name__}, not DeploymentStatus"
        assert out.model == model_name, f"{hook} answered about model {out.model!r}, asked about {model_name!r}"
        assert out.target == self.name, f"{hook}: DeploymentStatus.target is {out.target!r}, not {self.name!r}"
        return out


class DeploySuite(Suite):
    """A deploy target (`deploy`, `deploy_status`, `undeploy`).

    `class TestMine(DeploySuite, plugin="mine"): pass` runs it. Keywords: `options` (its `[deploy.mine]`
    table), `config`, `register`.
    """

    section: ClassVar[str] = "deploy"

    @pytest.fixture(scope="class")
    @classmethod
    def target(cls, tmp_path_factory: pytest.TempPathFactory, _conformance_plugin: None) -> Iterator[Target]:
        """A registered version in production, loaded; the target with its options; taken down at the end."""
        table = cls.stage()
        bench = Bench.create(tmp_path_factory.mktemp("deploy"), cls.table(deploy=table))
        runner = bench.runner()
        try:
            train, later = bench.periods(runner)
            version = runner.place(runner.build(train).version)
            model = runner.load(version)
        finally:
            runner.close()
        made = Target(name=cls.plugin, session=runner.session, run=runner.run,
                      options=runner.session.options_for("deploy", cls.plugin), version=version, model=model,
                      later=later)
        try:
            yield made
        finally:
            made.undeploy()

    def test_status_of_a_model_never_deployed(self, target: Target) -> None:
        """`deploy_status` of a model this target never put out is `deployed=False` (not an error), without
        a version."""
        status = target.status("never-deployed")
        assert status.deployed is False, f"reports a model it never deployed as deployed: {status}"
        assert status.version is None

    def test_undeploy_of_a_model_never_deployed(self, target: Target) -> None:
        """`undeploy` of a model this target never put out is not an error: `deployed=False`, nothing
        removed."""
        status = target.undeploy("never-deployed")
        assert status.deployed is False
        assert not status.details.get("removed"), f"removed something it never deployed: {status.details}"

    def test_deploy_says_where_the_version_went(self, target: Target) -> None:
        """`deploy` returns a `Deployment` naming this target, the version (`name:version`) and a location an
        operator can use; deploying the same version again (a rerun) is not an error."""
        ref = target.version.ref
        for _ in range(2):
            deployment = target.deploy()
            assert deployment.target == target.name, f"Deployment.target is {deployment.target!r}"
            assert deployment.model == ref, f"Deployment.model is {deployment.model!r}, not {ref!r}"
            assert isinstance(deployment.location, str) and deployment.location, "Deployment.location is empty"

    def test_deploy_status_undeploy_status(self, target: Target) -> None:
        """After `deploy`, `deploy_status` reports the model deployed with that version; `undeploy` takes it
        down (`deployed=False`, naming the version and what it removed); `deploy_status` then reports it not
        deployed; a second `undeploy` finds nothing and is not an error; a new `deploy` puts it out again."""
        ref = target.version.ref
        target.deploy()
        status = target.status()
        assert status.deployed is True, f"deploy_status after deploy: {status}"
        assert status.version == ref, f"deploy_status says {status.version!r} is deployed, not {ref!r}"

        removed = target.undeploy()
        assert removed.deployed is False, f"undeploy left it deployed: {removed}"
        assert removed.version == ref, f"undeploy says it took down {removed.version!r}, not {ref!r}"
        assert removed.details.get("removed"), f"undeploy does not list what it removed: {removed.details}"
        after = target.status()
        assert after.deployed is False, f"deploy_status after undeploy: {after}"

        again = target.undeploy()
        assert again.deployed is False and not again.details.get("removed"), again

        target.deploy()
        assert target.status().version == ref, "a deploy after undeploy did not put the version out again"

    def test_a_model_name_that_is_not_a_name(self, target: Target) -> None:
        """A model name that would escape the target's place (`../x`) is refused with a one-line opsloop error,
        or reported as not deployed; never a bare exception."""
        from opsloop.errors import OpsloopError, PluginCallError

        for hook in (target.status, target.undeploy):
            try:
                status = hook("../escape")
            except PluginCallError as exc:
                assert isinstance(exc.cause, OpsloopError), f"failed with a bare exception: {exc}"
                one_line(exc.cause)
            else:
                assert status.deployed is False
