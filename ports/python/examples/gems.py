"""An example actor: ``python -m vertebra_agent --config examples/agent.toml``."""

from vertebra_agent import Actor, HandlerError, operation


class Gems(Actor):
    resources = {"cluster": ["/cluster/rd00"]}

    def __init__(self):
        self.installed = {"rails": "2.3.2", "rack": "1.0.0"}

    @operation("/gem/list")
    async def list(self, ctx):
        return {"gems": [f"{name} {version}" for name, version in sorted(self.installed.items())]}

    @operation("/gem/install")
    async def install(self, ctx):
        name = ctx.values.get("name")
        if not isinstance(name, str) or not name:
            raise HandlerError("name must be a non-empty string")
        self.installed[name] = "latest"
        await ctx.send({"progress": f"installing {name}"})  # streamed as its own data chunk
        return {"installed": name}
