// /term: one terminal filling the window.
import { openTerminal } from './terminal.js';

openTerminal(document.getElementById('term'), document.getElementById('term-status'));
