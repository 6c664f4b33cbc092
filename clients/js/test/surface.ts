// Compiled with `tsc --noEmit --strict` by size-and-types.test.js: the declared surface
// is the one issue 14 names (and docs/clients.md uses).
import { PingwheelClient, DEFAULTS, type ClientState, type Position } from "../pingwheel.js";

declare const token: string;
const client = new PingwheelClient({ urls: ["ws://a:8080/", "ws://b:8080/"], getToken: async () => token });
const sub = client.subscribe("scores", (data, { channel, seq, epoch }) => {
  const c: string = channel;
  const s: number = seq;
  const e: string = epoch;
  console.log(data, c, s, e);
});
client.onUser((data, info) => console.log(data, info.seq));
client.on("state", (s: ClientState, detail) => console.log(s, detail.code, detail.reason));
client.on("error", (e) => console.log(e.type));
sub.on("recovered", ({ recovered, reason }) => console.log(recovered, reason));
sub.on("error", ({ code, message }) => console.log(code, message));
const kept: Position | null = sub.position;
client.subscribe("team:7", () => {}, { since: kept ?? undefined });
sub.unsubscribe();
const quick: number = DEFAULTS.quickSpread;
console.log(quick, client.state);
client.close();
