import { afterAll } from "vitest";
import { closeLiveSockets } from "./harness";

afterAll(closeLiveSockets);
